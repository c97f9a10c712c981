# Mask R-CNN with ConvFormer-S18 ("MetaFormer Baselines for Vision", Yu et al.,
# TPAMI 2024) on COCO, 1x schedule: mask_rcnn_poolformer_s12.py with the
# backbone swapped. Recipe: the PoolFormer one (AdamW, 12 epochs); no
# reference box AP is quoted here. ImageNet-1K weights (224 px, 83.0 top-1)
# from the sail-sg/metaformer README, official layout (renamed to timm's on
# load; the four output norms start fresh).
_base_ = './mask_rcnn_poolformer_s12.py'

checkpoint = 'https://huggingface.co/sail/dl/resolve/main/convformer/convformer_s18.pth'  # noqa: E501

model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvFormer',
        arch='s18',
        # all four levels feed the FPN, so norm0 stays (said explicitly so
        # a FORK_LAST3 variable left from a RetinaNet run cannot drop it)
        fork_last3=False,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    # S18 stage widths
    neck=dict(in_channels=[64, 128, 320, 512]))
