"""MNIST (TFDS, or idx files via `--config.data.idx_dir=DIR`): 10 images per
class, a linear head on random ConvNet features, paper-sized."""

from configs import common
from configs import mnist


def get_config():
  config = common.conv_setting(mnist.get_config(), 10)
  return config
