# UperNet with ConvFormer-S18 ("MetaFormer Baselines for Vision", Yu et al.,
# TPAMI 2024) on ADE20K, 160k iterations at 512x512, batch 16 = 8 GPUs x 2:
#   bash tools/dist_train.sh configs/segmentation/upernet_convformer_s18.py 8
# Reference: 48.6 mIoU, 54M parameters, 925 GMACs at 512x2048, the paper's
# ADE20K UperNet result (arXiv v4, Dec 2024) as quoted by a third party
# (github.com/jjwang8/PolyNeXt, segmentation/README.md, which says it
# follows the MetaFormer setup). The paper's own table was not readable from
# here: check it before citing. Not trained here.
# Recipe: mmseg's UperNet 160k ADE20K recipe for Swin and ConvNeXt with the
# values that source lists (AdamW lr 1e-4, weight decay 0.05, 1500-iteration
# linear warm-up, then poly power 1.0 to 0; drop path 0.3); no weight decay
# on 1-D parameters (norms, biases, scales), as timm trains MetaFormers.
# Norms in the heads are SyncBN (mmengine makes them BN in one process).
_base_ = [
    'mmseg::_base_/models/upernet_r50.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py'
]

custom_imports = dict(imports=['mmpoolformer'], allow_failed_imports=False)
# stop at the first NaN/inf loss or gradient, before the optimizer step;
# keep the random state in checkpoints, so --resume continues exactly
custom_hooks = [
    dict(type='NonFiniteCheckHook'),
    dict(type='RandomStateHook')
]
checkpoint = 'https://huggingface.co/sail/dl/resolve/main/convformer/convformer_s18.pth'  # noqa: E501
crop_size = (512, 512)

model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='ConvFormer',
        arch='s18',
        drop_path_rate=0.3,
        # UperNet uses all four levels, so norm0 stays; said explicitly so
        # a FORK_LAST3 variable left from a RetinaNet run cannot drop it
        fork_last3=False,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    # S18 stage widths; the auxiliary FCN head reads stage 3
    decode_head=dict(in_channels=[64, 128, 320, 512], num_classes=150),
    auxiliary_head=dict(in_channels=320, num_classes=150))

train_dataloader = dict(batch_size=2)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(flat_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
         end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500,
         end=160000)
]
