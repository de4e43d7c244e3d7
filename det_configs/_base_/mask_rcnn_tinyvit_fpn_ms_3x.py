# Mask R-CNN + FPN with a TinyViT backbone in Swin's multi-scale 3x recipe (Swin-T: 46.0 box /
# 41.6 mask AP): mmdet's Swin-T ms-crop 3x config with the backbone swapped; AdamW lr 1e-4,
# weight decay 0.05, 36 epochs, 16 images per batch. Children set the TinyViT size.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'

custom_imports = dict(imports=['tinyvit_backbone'], allow_failed_imports=False)
# The weights URL sits in init_cfg, not in a top-level `pretrained`, which would outlive the
# backbone in a Swin-T child (mmdet's own `pretrained` there is Swin-T's, the one it loads).
model = dict(
    backbone=dict(
        _delete_=True,
        type='TinyViT',
        arch='21m',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/wkcn/TinyViT-model-zoo/releases/download/checkpoints/tiny_vit_21m_22kto1k_distill.pth')),  # noqa
    neck=dict(in_channels=[96, 192, 384, 576]))
optim_wrapper = dict(
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={'attention_biases': dict(decay_mult=0.0)}))
