# Semantic FPN with a PoolFormer-S12 backbone (mmseg's FPN model base, the
# ResNet swapped for PoolFormer and the FPN for its widths), initialised from
# the official ImageNet weights. Model only: the configs that inherit it add
# the dataset, schedule and runtime bases, the input size and the classes.
_base_ = 'mmseg::_base_/models/fpn_r50.py'

custom_imports = dict(imports=['mmpoolformer'], allow_failed_imports=False)
checkpoint = 'https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s12.pth.tar'  # noqa: E501

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='PoolFormer',
        arch='s12',
        # the FPN uses all four levels, so norm0 stays; said explicitly so
        # a FORK_LAST3 variable left from a RetinaNet run cannot drop it
        fork_last3=False,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 128, 320, 512]))
