"""MNIST (TFDS, or idx files via `--config.data.idx_dir=DIR`): 1 image per
class, a linear head on random ConvNet features, sized for 2 CPU cores."""

from configs import common
from configs import mnist


def get_config():
  config = common.conv_setting(mnist.get_config(), 1, cpu=True)
  return config
