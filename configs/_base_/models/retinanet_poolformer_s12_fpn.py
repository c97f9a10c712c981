# RetinaNet with a PoolFormer-S12 backbone (mmdet's RetinaNet model base, the
# ResNet swapped for PoolFormer and the FPN for its widths), initialised from
# the official ImageNet weights. Model only: the configs that inherit it add
# the dataset, schedule and runtime bases.
_base_ = 'mmdet::_base_/models/retinanet_r50_fpn.py'

custom_imports = dict(imports=['mmpoolformer'], allow_failed_imports=False)
checkpoint = 'https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s12.pth.tar'  # noqa: E501

model = dict(
    backbone=dict(
        _delete_=True,
        type='PoolFormer',
        arch='s12',
        # FPN starts at level 1, so norm0 would never get a gradient and
        # DDP would stop on unused parameters.
        fork_last3=True,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 128, 320, 512]))
