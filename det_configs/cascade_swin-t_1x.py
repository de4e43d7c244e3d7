# Swin-T Cascade Mask R-CNN, 1x: the baseline TinyViT-21M is compared with. Published (Liu et al.
# 2021): 48.1 box / 41.7 mask AP, 86M params, 745 GFLOPs. mmdet 3.3 ships no such config.
_base_ = './_base_/cascade_mask_rcnn_tinyvit_fpn_giou_4conv1fc_ms_1x.py'

pretrained = 'checkpoints/swin_tiny_patch4_window7_224.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        embed_dims=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        drop_path_rate=0.2,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        convert_weights=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
