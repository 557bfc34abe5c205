"""scikit-learn's 8x8 digits (offline): 1 image per class, a linear head on
random ConvNet features; the recipe of digits_conv_ipc10, for 300 steps
(chosen on held-out images, docs/features.md)."""

from configs import digits_conv_ipc10


def get_config():
  config = digits_conv_ipc10.get_config()
  config.distill.images_per_class = 1
  config.num_steps = 300
  return config
