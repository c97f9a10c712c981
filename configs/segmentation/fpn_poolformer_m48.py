# Semantic FPN with PoolFormer-M48 on ADE20K, 40k iterations (paper: 42.7
# mIoU, 77.1M parameters). Same recipe as S12; see fpn_poolformer_s12.py.
_base_ = './fpn_poolformer_s12.py'

checkpoint = 'https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_m48.pth.tar'  # noqa: E501
model = dict(
    backbone=dict(
        arch='m48', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[96, 192, 384, 768]))
