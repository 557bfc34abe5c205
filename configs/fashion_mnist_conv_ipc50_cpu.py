"""Fashion-MNIST (TFDS, or idx files via `--config.data.idx_dir=DIR`): 50
images per class, a linear head on random ConvNet features, sized for 2 CPU
cores."""

from configs import common
from configs import fashion_mnist


def get_config():
  config = common.conv_setting(fashion_mnist.get_config(), 50, cpu=True)
  return config
