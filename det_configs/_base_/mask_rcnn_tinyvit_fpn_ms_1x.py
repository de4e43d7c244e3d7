# The multi-scale Mask R-CNN setting on the 1x schedule (Swin-T: 43.7 box / 39.8 mask AP).
_base_ = './mask_rcnn_tinyvit_fpn_ms_3x.py'

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11],
         gamma=0.1),
]
