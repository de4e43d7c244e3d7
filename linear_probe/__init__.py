"""Linear-probe and few-shot evaluation of frozen backbones on cached features."""
