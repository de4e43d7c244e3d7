# TinyViT-21M pretrained on ImageNet-1k only, Cascade Mask R-CNN, 1x, COCO. Paper (Wu et al.
# 2022, Table 6): 49.6 box AP, the row the distilled IN-21k pretraining (50.2,
# cascade_tinyvit21m.py) is compared with. Same setting; only the weights differ.
_base_ = './_base_/cascade_mask_rcnn_tinyvit_fpn_giou_4conv1fc_ms_1x.py'

model = dict(backbone=dict(init_cfg=dict(
    checkpoint='https://github.com/wkcn/TinyViT-model-zoo/releases/download/checkpoints/tiny_vit_21m_1k.pth')))  # noqa
