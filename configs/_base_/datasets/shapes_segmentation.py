# The built-in shapes set for semantic segmentation: label maps of background,
# circle, square and triangle on textured 160 px images, generated under
# data_root on first use (mmpoolformer's ShapesSegDataset); used at their
# native size. Laid out as mmseg's ADE20K base, which it inherits: same
# samplers, mIoU metric and test-time augmentation.
_base_ = 'mmseg::_base_/datasets/ade20k.py'

dataset_type = 'ShapesSegDataset'
data_root = 'data/shapes/'

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=8, num_workers=1,
    dataset=dict(_delete_=True, type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path='train', seg_map_path='seg/train'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=1,
    dataset=dict(_delete_=True, type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path='val', seg_map_path='seg/val'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
