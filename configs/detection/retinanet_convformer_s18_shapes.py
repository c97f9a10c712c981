# RetinaNet with ConvFormer-S18 on the built-in synthetic shapes set, from
# scratch: retinanet_poolformer_s12_shapes.py (its data, schedule, head and
# hooks) with the backbone swapped. No ImageNet weights (offline demo):
# timm's init (truncated-normal convs); ConvFormer's residual branches are
# fully on from the start (ResScale 1, no LayerScale), so the PoolFormer
# demo's batch norms and layer_scale_init_value=1.0 have no counterpart.
_base_ = './retinanet_poolformer_s12_shapes.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvFormer',
        arch='s18',
        # the neck starts at level 1
        fork_last3=True,
        init_cfg=None),
    # S18 stage widths
    neck=dict(in_channels=[64, 128, 320, 512]))

# The PoolFormer demo's 12-minute budget on 2 CPU cores: ConvFormer-S18
# takes 0.41 s a step there (PoolFormer-S12 0.20 s; AMD EPYC, with the CPU
# AMP wrapper's float32 depthwise convolutions), so 12 epochs, not 24, with
# the same warm-up-then-cosine shape.
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=200),
    dict(type='CosineAnnealingLR', eta_min_ratio=0.01, by_epoch=True,
         begin=0, end=max_epochs, convert_to_iter_based=True)
]
default_hooks = dict(checkpoint=dict(interval=max_epochs))
