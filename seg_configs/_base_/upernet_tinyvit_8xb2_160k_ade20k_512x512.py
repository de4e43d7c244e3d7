# UperNet with a TinyViT backbone on ADE20K 512x512, mmseg's Swin-T recipe unchanged (Swin-T:
# 44.41 mIoU single scale): AdamW lr 6e-5, weight decay 0.01, 1500-iteration linear warmup,
# poly decay to 160k iterations, 8 GPUs x 2 images, auxiliary FCN head on stage 3.
# Attention windows 16, 16, 32, 16 are those of the official 512 checkpoint: a 224 checkpoint's
# attention biases are resized (bicubic) to them when loading.
# mmseg's Swin-T UperNet config is not inherited but restated from its own bases (its values
# below), so none of its Swin-only values, such as its unused checkpoint_file URL, ends up here.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_160k.py'
]

custom_imports = dict(imports=['tinyvit_backbone'], allow_failed_imports=False)
pretrained = 'https://github.com/wkcn/TinyViT-model-zoo/releases/download/checkpoints/tiny_vit_21m_22kto1k_distill.pth'  # noqa
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,
        type='TinyViT',
        arch='21m',
        window_sizes=[16, 16, 32, 16],
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 576], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))
# mmseg's Swin-T recipe: AdamW, none of its weight decay on position tables and norms; for
# TinyViT also none on attention biases and norms of any kind (BatchNorms included).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.0),
            'relative_position_bias_table': dict(decay_mult=0.0),
            'norm': dict(decay_mult=0.0),
            'attention_biases': dict(decay_mult=0.0),
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
# 8 GPUs x 2 images
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
