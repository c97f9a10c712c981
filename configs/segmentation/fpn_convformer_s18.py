# Semantic FPN with ConvFormer-S18 ("MetaFormer Baselines for Vision", Yu et
# al., TPAMI 2024) on ADE20K, 40k iterations: fpn_poolformer_s12.py with the
# backbone swapped (same recipe; no reference mIoU is quoted here).
# ImageNet-1K weights from the sail-sg/metaformer README, official layout
# (renamed to timm's on load; the four output norms start fresh).
_base_ = './fpn_poolformer_s12.py'

checkpoint = 'https://huggingface.co/sail/dl/resolve/main/convformer/convformer_s18.pth'  # noqa: E501

model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvFormer',
        arch='s18',
        # the FPN uses all four levels, so norm0 stays; said explicitly so
        # a FORK_LAST3 variable left from a RetinaNet run cannot drop it
        fork_last3=False,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    # S18 stage widths
    neck=dict(in_channels=[64, 128, 320, 512]))
