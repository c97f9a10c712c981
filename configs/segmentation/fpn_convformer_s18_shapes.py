# Semantic FPN with ConvFormer-S18 on the built-in synthetic shapes set,
# from scratch: fpn_poolformer_s12_shapes.py (its data, schedule, neck/head
# and hooks) with the backbone swapped. No ImageNet weights (offline demo):
# timm's init (truncated-normal convs); ConvFormer's residual branches are
# fully on from the start (ResScale 1, no LayerScale), so the PoolFormer
# demo's batch norms and layer_scale_init_value=1.0 have no counterpart.
_base_ = './fpn_poolformer_s12_shapes.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvFormer',
        arch='s18',
        # all four levels feed the FPN
        fork_last3=False,
        init_cfg=None),
    # S18 stage widths
    neck=dict(in_channels=[64, 128, 320, 512]))

# The PoolFormer demo's 10-minute budget on 2 CPU cores: ConvFormer-S18
# takes 0.39-0.43 s a step there (PoolFormer-S12 0.2 s; AMD EPYC, with the
# CPU AMP wrapper's float32 depthwise convolutions), so 1250 iterations,
# not 2400, with the same warm-up-then-cosine shape.
max_iters = 1250
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, begin=0, end=100,
         by_epoch=False),
    dict(type='CosineAnnealingLR', eta_min_ratio=0.01, begin=0,
         end=max_iters, by_epoch=False)
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters))
