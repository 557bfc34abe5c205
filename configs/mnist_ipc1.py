"""MNIST, 1 image(s) per class, learned labels and l2reg."""

from configs import common
from configs import mnist


def get_config():
  return common.learned_setting(mnist.get_config(), 1)
