# Swin-T Cascade Mask R-CNN, 1x: the baseline TinyViT-21M is compared with, in Swin's own 1x
# setting (the shared base; drop path 0.0 as in Swin's 1x config). Published (Liu et al. 2021):
# 48.1 box / 41.7 mask AP, 86M params, 745 GFLOPs. mmdet 3.3 ships no such config.
_base_ = ['./_base_/cascade_mask_rcnn_tinyvit_fpn_giou_4conv1fc_ms_1x.py',
          './_base_/swin_t_backbone.py']

model = dict(backbone=dict(_base_.swin_t_backbone, drop_path_rate=0.0),
             neck=dict(in_channels=[96, 192, 384, 768]))
