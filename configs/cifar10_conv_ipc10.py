"""CIFAR-10 (TFDS), ZCA-whitened as in KIP, FRePo and RCIG: 10 images per
class, a linear head on random ConvNet features, paper-sized."""

from configs import common
from configs import cifar10


def get_config():
  config = common.conv_setting(cifar10.get_config(), 10)
  config.data.zca = True
  return config
