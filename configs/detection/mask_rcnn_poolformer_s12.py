# Mask R-CNN with PoolFormer-S12 on COCO, 1x schedule
# (paper: 37.3 box AP, 34.6 mask AP). mmdet's mask-rcnn_r50_fpn_1x_coco.py
# with the PoolFormer model base: the paper's 12 epochs with lr steps at 8
# and 11, a 500-iter linear warm-up from 0.001 and 2 images per GPU.
_base_ = [
    '../_base_/models/mask_rcnn_poolformer_s12_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py'
]

# stop at the first NaN/inf loss or gradient, before the optimizer step;
# keep the random state in checkpoints, so --resume continues exactly
custom_hooks = [
    dict(type='NonFiniteCheckHook'),
    dict(type='RandomStateHook')
]

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, weight_decay=1e-4))
# lr 2e-4 is the paper's, for 8 GPUs x 2 images. As in mmdet's own configs it
# is not rescaled for other total batch sizes unless you ask for it:
# tools/train.py ... --auto-scale-lr (linear scaling from base 16).
auto_scale_lr = dict(enable=False, base_batch_size=16)
