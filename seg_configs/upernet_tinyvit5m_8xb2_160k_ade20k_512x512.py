# TinyViT-5M UperNet, ADE20K 512x512, 160k iterations. No published TinyViT number; baseline:
# Swin-T UperNet in the same recipe, 44.41 mIoU (single scale). Drop path grows with size
# (5M 0.1, 11M 0.2, 21M 0.3 = Swin-T's rate in this recipe).
_base_ = './_base_/upernet_tinyvit_8xb2_160k_ade20k_512x512.py'

pretrained = 'https://github.com/wkcn/TinyViT-model-zoo/releases/download/checkpoints/tiny_vit_5m_22kto1k_distill.pth'  # noqa
model = dict(
    backbone=dict(arch='5m', drop_path_rate=0.1, init_cfg=dict(checkpoint=pretrained)),
    decode_head=dict(in_channels=[64, 128, 160, 320]),
    auxiliary_head=dict(in_channels=160))
