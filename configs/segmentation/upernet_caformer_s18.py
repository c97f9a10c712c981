# UperNet with CAFormer-S18 ("MetaFormer Baselines for Vision", Yu et al.,
# TPAMI 2024) on ADE20K, 160k iterations: upernet_convformer_s18.py with the
# backbone swapped (same recipe). Reference: 48.9 mIoU, 54M parameters, 1024
# GMACs at 512x2048 (the paper's arXiv v4 as quoted by
# github.com/jjwang8/PolyNeXt, segmentation/README.md; not checked against
# the paper, not trained here).
_base_ = './upernet_convformer_s18.py'

checkpoint = 'https://huggingface.co/sail/dl/resolve/main/caformer/caformer_s18.pth'  # noqa: E501

model = dict(
    backbone=dict(type='CAFormer', init_cfg=dict(checkpoint=checkpoint)))
