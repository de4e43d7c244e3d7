# TinyViT-21M Semantic FPN, ADE20K 512x512. No published TinyViT number. Recipe of the
# transformer Semantic-FPN results (PVT, Wang et al. 2021): AdamW lr 1e-4, weight decay 1e-4,
# poly decay (power 0.9) over 80k iterations, 16 images per batch (4 GPUs x 4), on mmseg's
# Semantic-FPN ADE20K base.
_base_ = 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py'

custom_imports = dict(imports=['tinyvit_backbone'], allow_failed_imports=False)
pretrained = 'https://github.com/wkcn/TinyViT-model-zoo/releases/download/checkpoints/tiny_vit_21m_22kto1k_distill.pth'  # noqa
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='TinyViT',
        arch='21m',
        window_sizes=[16, 16, 32, 16],
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 576]))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={'attention_biases': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=80000, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=80000, val_interval=8000)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=8000))
