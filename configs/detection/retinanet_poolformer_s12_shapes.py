# RetinaNet with PoolFormer-S12 on the built-in synthetic shapes set, from
# scratch on a CPU (the README's first command; 10-34 min on 2 cores,
# depending on the CPU: docs/demos.md).
# The COCO config's bases with the shapes dataset base (160 px images) in
# place of COCO's; changes the schedule, and sizes the neck/head and anchors
# for 160 px images.
_base_ = [
    '../_base_/models/retinanet_poolformer_s12_fpn.py',
    '../_base_/datasets/shapes_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py', 'mmdet::retinanet/retinanet_tta.py'
]

# At 160 px the 256-wide, 4-conv head over 5 levels costs ~3x the backbone:
# 128 channels, 2 convs, GN (trains from scratch at a high lr) and only the
# strides 8-32 that the 9-99 px objects need.
model = dict(
    # From scratch (no ImageNet weights offline): batch norms, residual
    # branches on from the start and He init, as in the segmentation demo.
    backbone=dict(
        norm_cfg=dict(type='BN'),
        layer_scale_init_value=1.0,
        init_cfg=dict(_delete_=True, type='Kaiming', layer='Conv2d')),
    neck=dict(out_channels=128, add_extra_convs=False, num_outs=3),
    bbox_head=dict(
        num_classes=3,
        in_channels=128,
        feat_channels=128,
        stacked_convs=2,
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
        # 16-100 px anchors over the three levels
        anchor_generator=dict(octave_base_scale=2, strides=[8, 16, 32]),
        # GIoU on the decoded boxes (as mmdet's ATSS/GFL configs) instead of
        # L1 on the deltas: +0.006 to +0.016 bbox mAP (0.733 against 0.721
        # on average) in three paired runs, seeds 1-3, about 1% more time
        # (2 cores of an AMD EPYC; docs/demos.md)
        reg_decoded_bbox=True,
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0)))

max_epochs = 24
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
# From scratch, a GN head takes a 20x higher lr than the COCO fine-tuning
# recipe (AdamW, weight decay 1e-4); a short warm-up and a cosine decay fit
# the whole budget.
optim_wrapper = dict(
    # bf16 autocast on CPU; on a GPU it is mmengine's AmpOptimWrapper
    type='CPUAmpOptimWrapper', dtype='bfloat16',
    # fused: one kernel per parameter, ~9 ms a step less than the default
    # loop on 2 CPU cores (torch < 2.4 has none for CPUs: tools/train.py
    # then runs the default, the same update)
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-3, weight_decay=1e-4,
                   fused=True),
    clip_grad=dict(max_norm=10, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=200),
    dict(type='CosineAnnealingLR', eta_min_ratio=0.01, by_epoch=True,
         begin=0, end=max_epochs, convert_to_iter_based=True)
]
auto_scale_lr = dict(enable=False)
# NHWC layout (faster on x86 CPUs); freed tensor memory kept for reuse
# (fewer page faults and less system time; the step time on the AMD EPYC is
# the same within noise, see mmpoolformer/engine/hooks/cpu_malloc_hook.py);
# stop at the first NaN/inf loss or grad; random state in checkpoints for
# --resume
custom_hooks = [
    dict(type='ChannelsLastHook'),
    dict(type='CPUMallocHook'),
    dict(type='NonFiniteCheckHook'),
    dict(type='RandomStateHook')
]
# two 150 MB checkpoints kept, not one per epoch: mmengine deletes the
# oldest before writing the next, so with one a kill while saving would
# leave nothing to resume from
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(interval=6, max_keep_ckpts=2))
