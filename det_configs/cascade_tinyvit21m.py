# TinyViT-21M Cascade Mask R-CNN, 1x, COCO. Paper (Wu et al. 2022): 50.2 box AP, 2.1 above
# Swin-T in the same setting (48.1 box / 41.7 mask AP: cascade_swin-t_1x.py).
# Weights: any TinyViT-21M checkpoint (official .pth, timm .pth / .safetensors) at
# `pretrained`; window sizes stay those of the 224 checkpoint (7, 7, 14, 7).
_base_ = './_base_/cascade_mask_rcnn_tinyvit_fpn_giou_4conv1fc_ms_1x.py'
