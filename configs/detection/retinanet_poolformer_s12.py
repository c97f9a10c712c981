# RetinaNet with PoolFormer-S12 on COCO, 1x schedule (paper: 36.2 box AP).
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

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
    neck=dict(
        in_channels=[64, 128, 320, 512],
        start_level=1,
        add_extra_convs='on_input',
        num_outs=5))

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True,
         milestones=[8, 11], gamma=0.1)
]
# 8 GPUs x 2 images; other batch sizes get a linearly scaled lr
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=True, base_batch_size=16)
