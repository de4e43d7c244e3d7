# Cascade Mask R-CNN + FPN in Swin's COCO setting, 3x (36 epochs); `..._1x.py` shortens it.
# Source: SwinTransformer/Swin-Transformer-Object-Detection, configs/swin/
# cascade_mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_giou_4conv1f_adamw_3x_coco.py and
# configs/_base_/schedules/schedule_1x.py (mmdet 2), written in mmdet 3 terms:
# * heads: 4conv1fc box heads with SyncBN and GIoU loss (weight 10), the heads of Swin's config
#   (mmdet's ConvNeXt cascade config has the same heads and pipeline; it is not inherited, so
#   none of its own values, such as its ConvNeXt checkpoint URL, ends up in ours);
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
# (conv-BN pairs) keep weight decay, as Swin's 'norm' key does not name them; and two choices
# Swin's config cannot make for TinyViT, commented where they are set below: no LayerNorm on
# the maps fed to FPN (out_norms=False) and BatchNorms that train with per-GPU statistics.
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]

custom_imports = dict(imports=['tinyvit_backbone'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='TinyViT',
        arch='21m',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,  # Swin-T's 3x value (our inference for TinyViT)
        # Our inference: Swin adds a LayerNorm (norm0..norm3) on each map it feeds to FPN,
        # because its blocks are pre-norm and leave the residual stream unnormalised. TinyViT's
        # pretraining never normalised these maps either (its only output norm, norm_head, sits
        # after the pooling of the last stage), so Swin's LayerNorms would be new layers
        # trained from scratch on COCO, on top of weights pretrained without them; we feed
        # FPN exactly what the checkpoint computes, and the backbone holds only pretrained
        # parameters (21M, the paper's count). out_norms=True gives Swin's form.
        out_norms=False,
        # Our inference: Swin's backbone has no BatchNorm, so its config says nothing about
        # one. TinyViT's conv-BN pairs train in train mode with per-GPU statistics (2 images
        # of about 800 x 1333 per GPU: the statistics of each 1/4-scale map pool some 10^5
        # positions), as plain BatchNorms do in any backbone placed in Swin's training code,
        # which converts no backbone norm to SyncBN; norm_eval=True would freeze the ImageNet
        # statistics instead. SyncBN over the 8 GPUs: add sync_bn='torch' to the config.
        norm_eval=False,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/wkcn/TinyViT-model-zoo/releases/download/checkpoints/tiny_vit_21m_22kto1k_distill.pth')),  # noqa
    neck=dict(in_channels=[96, 192, 384, 576]),
    roi_head=dict(bbox_head=[
        dict(type='ConvFCBBoxHead', num_shared_convs=4, num_shared_fcs=1, in_channels=256,
             conv_out_channels=256, fc_out_channels=1024, roi_feat_size=7, num_classes=80,
             bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                             target_stds=stds),
             reg_class_agnostic=False, reg_decoded_bbox=True,
             norm_cfg=dict(type='SyncBN', requires_grad=True),
             loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
             loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
        # the three stages' box-regression scales, as in every Cascade R-CNN
        for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1],
                     [0.033, 0.033, 0.067, 0.067])
    ]))

# Swin's multi-scale training with crops (mmdet 2's AutoAugment is mmcv's RandomChoice here).
__scales = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333),
            (672, 1333), (704, 1333), (736, 1333), (768, 1333), (800, 1333)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=_base_.backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=__scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)],
                     keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                     allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=__scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]

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
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
auto_scale_lr = dict(enable=False, base_batch_size=16)
