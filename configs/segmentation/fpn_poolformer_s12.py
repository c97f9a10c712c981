# Semantic FPN with PoolFormer-S12 on ADE20K, 40k iterations (paper: 37.2
# mIoU, 15.7M parameters). Batch 32 = 8 GPUs x 4 images:
#   bash tools/dist_train.sh configs/segmentation/fpn_poolformer_s12.py 8
# Norms in the neck/head are SyncBN. A single process (one GPU or the CPU)
# needs no change: mmengine turns SyncBN into BN when not distributed. For
# several CPU processes (gloo has no SyncBN) use plain BN:
#   --cfg-options model.decode_head.norm_cfg.type=BN
_base_ = [
    '../_base_/models/fpn_poolformer_s12.py',
    'mmseg::_base_/datasets/ade20k.py', 'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_40k.py'
]

# stop at the first NaN/inf loss or gradient, before the optimizer step;
# keep the random state in checkpoints, so --resume continues exactly
custom_hooks = [
    dict(type='NonFiniteCheckHook'),
    dict(type='RandomStateHook')
]
crop_size = (512, 512)

model = dict(
    data_preprocessor=dict(size=crop_size), decode_head=dict(num_classes=150))

test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, weight_decay=1e-4))
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=40000,
         by_epoch=False)
]
