# Swin's Cascade Mask R-CNN 1x setting (the one that gave Swin-T 48.1 box AP): the 3x base on 12
# epochs with steps at 8 and 11 (Swin's schedule_1x: same 500-iteration warmup) and no drop path
# (Swin-T's 1x config sets drop_path_rate=0.0; the 3x one 0.2).
_base_ = './cascade_mask_rcnn_tinyvit_fpn_giou_4conv1fc_ms_3x.py'

model = dict(backbone=dict(drop_path_rate=0.0))
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11],
         gamma=0.1),
]
