# RetinaNet with PoolFormer-S24 on COCO, 1x schedule (paper: 38.9 box AP).
_base_ = './retinanet_poolformer_s12.py'

checkpoint = 'https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s24.pth.tar'  # noqa: E501

model = dict(
    backbone=dict(
        arch='s24', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)))
# Same stage widths as S12, so the FPN in_channels carry over.
