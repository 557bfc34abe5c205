"""The seed's setting on TFDS CIFAR-10 (32x32x3, 3072 features)."""

from configs import mnist


def get_config():
  config = mnist.get_config()
  config.data.dataset = 'cifar10'
  return config
