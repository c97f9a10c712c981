# Semantic FPN with PoolFormer-S36 on ADE20K, 40k iterations (paper: 42.0
# mIoU, 34.6M parameters). Same recipe as S12; see fpn_poolformer_s12.py.
_base_ = './fpn_poolformer_s12.py'

checkpoint = 'https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s36.pth.tar'  # noqa: E501
model = dict(
    backbone=dict(
        arch='s36', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)))
