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
