# Swin-T Mask R-CNN, multi-scale 1x: the baseline of the TinyViT Mask R-CNN 1x configs, trained
# the same way. Published (Liu et al. 2021): 43.7 box / 39.8 mask AP, 48M params, 267 GFLOPs,
# with drop path 0.1 (Swin's mask_rcnn_swin_tiny_..._adamw_1x config).
# (mmdet's own Swin-T 1x config trains single-scale and reaches 42.7 / 39.3.)
_base_ = ['./_base_/mask_rcnn_tinyvit_fpn_ms_1x.py', './_base_/swin_t_backbone.py']

model = dict(backbone=dict(_base_.swin_t_backbone, drop_path_rate=0.1),
             neck=dict(in_channels=[96, 192, 384, 768]))
