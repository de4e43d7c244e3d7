# TinyViT-21M (IN-21k distilled, fine-tuned on IN-1k) Cascade Mask R-CNN, 1x, COCO. Paper (Wu et
# al. 2022, Table 6): 50.2 box AP, against Swin-T's 48.1 in Swin's 1x setting
# (cascade_swin-t_1x.py) and 49.6 for TinyViT-21M trained on IN-1k only (cascade_tinyvit21m_in1k.py).
# Weights: the registry's tiny_vit_21m_22kto1k_distill, fetched once into torch.hub's cache;
# windows stay those of the 224 checkpoint (7, 7, 14, 7).
_base_ = './_base_/cascade_mask_rcnn_tinyvit_fpn_giou_4conv1fc_ms_1x.py'

custom_imports = dict(imports=['tinyvit_backbone'], allow_failed_imports=False)
