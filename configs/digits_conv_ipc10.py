"""scikit-learn's 8x8 digits (offline): 10 images per class, a linear head on
random ConvNet features; minutes on 2 CPU cores."""

from configs import common
from configs import default


def get_config():
  config = common.conv_setting(default.get_config(), 10, cpu=True)
  # 8x8 images: two blocks leave 2x2 maps (three would leave 1x1).
  config.model.depth = 2
  # The ConvNet evaluator likewise (benchmarks/accuracy.md's digits rows).
  config.eval.net_depth = 2
  return config
