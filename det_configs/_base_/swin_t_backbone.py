# Swin-T as a drop-in backbone for the baselines (mmdet's SwinTransformer, ImageNet-1k weights
# of the Swin paper); a config takes it with `backbone={{_base_.swin_t_backbone}}`.
swin_t_pretrained = 'checkpoints/swin_tiny_patch4_window7_224.pth'
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
