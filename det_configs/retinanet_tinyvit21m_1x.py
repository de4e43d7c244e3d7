# TinyViT-21M RetinaNet, 1x (single scale 1333x800), COCO. No published TinyViT number. Unlike
# mmdet's Swin-T RetinaNet config (SGD 0.01) it trains with AdamW lr 1e-4, weight decay 0.05,
# the Swin paper's recipe for transformer backbones.
_base_ = 'mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py'

custom_imports = dict(imports=['tinyvit_backbone'], allow_failed_imports=False)
pretrained = 'https://github.com/wkcn/TinyViT-model-zoo/releases/download/checkpoints/tiny_vit_21m_22kto1k_distill.pth'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='TinyViT',
        arch='21m',
        out_indices=(1, 2, 3),  # the FPN starts at stride 8: stage 0 stays internal
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 576]))
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={'attention_biases': dict(decay_mult=0.0)}))
