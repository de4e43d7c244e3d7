# Swin-T as a drop-in backbone for the baselines (mmdet's SwinTransformer, the ImageNet-1k weights
# of the Swin paper, as mmdet's own Swin configs name them); a config takes it with
# `backbone=dict(_base_.swin_t_backbone, ...)`. Drop path 0.2 is the value of Swin's 3x configs;
# its 1x configs lower it (Mask R-CNN 0.1, Cascade 0.0) and so do ours.
swin_t_pretrained = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth'  # noqa
swin_t_backbone = dict(
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
    init_cfg=dict(type='Pretrained', checkpoint=swin_t_pretrained))
