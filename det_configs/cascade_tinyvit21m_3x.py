# TinyViT-21M Cascade Mask R-CNN, 3x (36 epochs), in Swin's 3x setting (drop path 0.2). Baseline:
# Swin-T reaches 50.4 box / 43.7 mask AP in this setting; the paper reports no TinyViT 3x number.
_base_ = './_base_/cascade_mask_rcnn_tinyvit_fpn_giou_4conv1fc_ms_3x.py'
