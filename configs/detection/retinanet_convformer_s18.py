# RetinaNet with ConvFormer-S18 ("MetaFormer Baselines for Vision", Yu et al.,
# TPAMI 2024) on COCO, 1x schedule: retinanet_poolformer_s12.py with the
# backbone swapped. Recipe: the PoolFormer one (AdamW, 12 epochs); no
# reference box AP is quoted here. ImageNet-1K weights (224 px, 83.0 top-1)
# from the sail-sg/metaformer README, official layout (renamed to timm's on
# load; the four output norms start fresh).
_base_ = './retinanet_poolformer_s12.py'

checkpoint = 'https://huggingface.co/sail/dl/resolve/main/convformer/convformer_s18.pth'  # noqa: E501

model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvFormer',
        arch='s18',
        # the FPN starts at level 1: norm0 would get no gradient (DDP's
        # unused parameters), so stage 0 goes out unnormalised
        fork_last3=True,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    # S18 stage widths
    neck=dict(in_channels=[64, 128, 320, 512]))
