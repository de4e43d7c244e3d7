# Cascade Mask R-CNN + FPN in Swin's COCO detection setting: 4conv1fc box heads with SyncBN and
# GIoU loss, multi-scale training (short side 480-800, long side <= 1333, plus the DETR
# resize-crop branch), AdamW lr 1e-4, weight decay 0.05, 16 images per batch (8 GPUs x 2);
# 36 epochs with steps at 27 and 33 (the 1x base shortens this).
# mmdet 3.3 has no Swin cascade config; its ConvNeXt cascade 3x config has the same heads,
# pipeline and schedule, so it is inherited and only the backbone and optimizer change.
_base_ = 'mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'

custom_imports = dict(imports=['tinyvit_backbone'], allow_failed_imports=False)
pretrained = 'checkpoints/tiny_vit_21m_22kto1k_distill.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='TinyViT',
        arch='21m',
        out_indices=(0, 1, 2, 3),
        # TinyViT-21M's own IN-1k training rate; also Swin-T's in this setting
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 576]))

# fp32 like mmdet's Swin configs (the ConvNeXt parent uses AMP; add --amp to train with it).
# No weight decay on attention biases (TinyViT), relative position tables (Swin) and norms.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={
            'attention_biases': dict(decay_mult=0.0),
            'relative_position_bias_table': dict(decay_mult=0.0),
            'absolute_pos_embed': dict(decay_mult=0.0),
        }))
auto_scale_lr = dict(enable=False, base_batch_size=16)
