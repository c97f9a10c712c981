# RetinaNet-S12 on the built-in synthetic shapes set, from scratch on a CPU.
# Inherits the COCO recipe and swaps data, image scale and schedule only.
_base_ = './retinanet_poolformer_s12.py'

data_root = 'data/shapes/'
img_scale = (160, 160)
metainfo = dict(classes=('circle', 'square', 'triangle'))

model = dict(
    backbone=dict(init_cfg=None),  # no ImageNet weights offline
    bbox_head=dict(num_classes=3))

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

train_cfg = dict(max_epochs=12, val_interval=12)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
auto_scale_lr = dict(enable=False)
default_hooks = dict(logger=dict(interval=10))
