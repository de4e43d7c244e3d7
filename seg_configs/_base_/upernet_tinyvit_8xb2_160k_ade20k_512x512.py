# UperNet with a TinyViT backbone on ADE20K 512x512, mmseg's Swin-T recipe unchanged (Swin-T:
# 44.41 mIoU single scale): AdamW lr 6e-5, weight decay 0.01, 1500-iteration linear warmup,
# poly decay to 160k iterations, 8 GPUs x 2 images, auxiliary FCN head on stage 3.
# Attention windows 16, 16, 32, 16 are those of the official 512 checkpoint: a 224 checkpoint's
# attention biases are resized (bicubic) to them when loading.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['tinyvit_backbone'], allow_failed_imports=False)
pretrained = 'https://github.com/wkcn/TinyViT-model-zoo/releases/download/checkpoints/tiny_vit_21m_22kto1k_distill.pth'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='TinyViT',
        arch='21m',
        window_sizes=[16, 16, 32, 16],
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 576]),
    auxiliary_head=dict(in_channels=384))
# No weight decay on attention biases and norms (Swin's config exempts its position tables).
optim_wrapper = dict(
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={'attention_biases': dict(decay_mult=0.0)}))
