"""CIFAR-10 (TFDS), ZCA-whitened as in KIP, FRePo and RCIG: 50 images per
class, a linear head on random ConvNet features, sized for 2 CPU cores."""

from configs import common
from configs import cifar10


def get_config():
  config = common.conv_setting(cifar10.get_config(), 50, cpu=True)
  config.data.zca = True
  return config
