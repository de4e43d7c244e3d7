# Cascade Mask R-CNN + FPN in Swin's COCO setting, 3x (36 epochs); `..._1x.py` shortens it.
# Source: SwinTransformer/Swin-Transformer-Object-Detection, configs/swin/
# cascade_mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_giou_4conv1f_adamw_3x_coco.py and
# configs/_base_/schedules/schedule_1x.py (mmdet 2), written in mmdet 3 terms:
# * heads: 4conv1fc box heads with SyncBN and GIoU loss (weight 10), from mmdet's ConvNeXt cascade
#   config, whose heads and train pipeline are Swin's (only the backbone and optimizer change);
# * train: flip 0.5, then one of two policies at random (mmdet 2's AutoAugment = mmcv's
#   RandomChoice): short side 480..800 step 32 (long <= 1333), or resize 400/500/600, RandomCrop
#   384-600 (absolute_range), then the same multi-scale resize; test (1333, 800);
# * 2 images per GPU x 8 GPUs; AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05, none on
#   absolute_pos_embed, relative_position_bias_table and norm;
# * linear warmup over 500 iterations from 0.001 x lr, x0.1 at epochs 27 and 33;
# * mixed precision: Swin trained with apex O1 (dynamic loss scale); here mmengine's
#   AmpOptimWrapper with a dynamic loss scale (GPU only: the embedded CPU overlay uses OptimWrapper).
# Our inference, not published (the paper says only "the same training settings used in Swin"):
# TinyViT takes Swin-T's values unchanged, drop path included; 'attention_biases', TinyViT's
# counterpart of relative_position_bias_table, joins the no-decay keys; TinyViT's BatchNorms
# (conv-BN pairs) keep weight decay, as Swin's 'norm' key does not name them.
_base_ = 'mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'

custom_imports = dict(imports=['tinyvit_backbone'], allow_failed_imports=False)
pretrained = 'https://github.com/wkcn/TinyViT-model-zoo/releases/download/checkpoints/tiny_vit_21m_22kto1k_distill.pth'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='TinyViT',
        arch='21m',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,  # Swin-T's 3x value (our inference for TinyViT)
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 576]))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.0),
            'relative_position_bias_table': dict(decay_mult=0.0),
            'norm': dict(decay_mult=0.0),
            'attention_biases': dict(decay_mult=0.0),
        }))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33],
         gamma=0.1),
]
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
