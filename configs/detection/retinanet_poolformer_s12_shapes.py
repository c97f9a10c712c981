# RetinaNet with PoolFormer-S12 on the built-in synthetic shapes set, from
# scratch on a CPU (the README's first command; about 11 min on 2 cores).
# Inherits the COCO recipe; swaps data, image scale and schedule, and sizes
# the neck/head and anchors for 160 px images.
_base_ = './retinanet_poolformer_s12.py'

data_root = 'data/shapes/'
img_scale = (160, 160)

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
        anchor_generator=dict(octave_base_scale=2, strides=[8, 16, 32])))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))
]
train_dataloader = dict(
    batch_size=8, num_workers=1,
    dataset=dict(type='ShapesDataset', data_root=data_root,
                 ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=1,
    dataset=dict(type='ShapesDataset', data_root=data_root,
                 ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 24
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
# From scratch, a GN head takes a 20x higher lr than the COCO fine-tuning
# recipe; a short warm-up and a cosine decay fit the whole budget.
optim_wrapper = dict(
    # bf16 autocast on CPU; on a GPU it is mmengine's AmpOptimWrapper
    type='CPUAmpOptimWrapper', dtype='bfloat16',
    optimizer=dict(lr=2e-3),
    clip_grad=dict(max_norm=10, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=200),
    dict(type='CosineAnnealingLR', eta_min_ratio=0.01, by_epoch=True,
         begin=0, end=max_epochs, convert_to_iter_based=True)
]
auto_scale_lr = dict(enable=False)
# NHWC layout (faster on x86 CPUs); stop at the first NaN/inf loss or grad;
# random state in checkpoints for --resume
custom_hooks = [
    dict(type='ChannelsLastHook'),
    dict(type='NonFiniteCheckHook'),
    dict(type='RandomStateHook')
]
# two 150 MB checkpoints kept, not one per epoch: mmengine deletes the
# oldest before writing the next, so with one a kill while saving would
# leave nothing to resume from
default_hooks = dict(
    logger=dict(interval=25),
    checkpoint=dict(interval=6, max_keep_ckpts=2))
