# Semantic FPN with PoolFormer-S24 on ADE20K, 40k iterations (paper: 40.3
# mIoU; 25.1M parameters, the paper's 23.2M is a typo). Same recipe as S12;
# see fpn_poolformer_s12.py.
_base_ = './fpn_poolformer_s12.py'

checkpoint = 'https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s24.pth.tar'  # noqa: E501
model = dict(
    backbone=dict(
        arch='s24', init_cfg=dict(type='Pretrained', checkpoint=checkpoint)))
