# The 3x cascade setting on the 1x schedule: 12 epochs, steps at 8 and 11 (Swin-T: 48.1 box AP).
_base_ = './cascade_mask_rcnn_tinyvit_fpn_giou_4conv1fc_ms_3x.py'

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11],
         gamma=0.1),
]
