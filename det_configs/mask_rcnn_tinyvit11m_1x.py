# TinyViT-11M Mask R-CNN, multi-scale 1x, COCO. No published TinyViT number; baseline in this
# setting: Swin-T: 43.7 box / 39.8 mask AP. Drop path as in TinyViT's IN-1k training (5M 0.0, 11M 0.1, 21M 0.2).
_base_ = './_base_/mask_rcnn_tinyvit_fpn_ms_1x.py'

pretrained = 'https://github.com/wkcn/TinyViT-model-zoo/releases/download/checkpoints/tiny_vit_11m_22kto1k_distill.pth'  # noqa
model = dict(
    backbone=dict(arch='11m', drop_path_rate=0.1, init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 448]))
