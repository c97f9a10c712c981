# RetinaNet with PoolFormer-S36 on COCO, 1x schedule (paper: 39.5 box AP).
_base_ = './retinanet_poolformer_s12.py'

checkpoint = 'https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s36.pth.tar'  # noqa: E501

model = dict(
    backbone=dict(
        arch='s36', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)))
# Same stage widths as S12, so the FPN in_channels carry over.
