"""The seed's setting on Fashion-MNIST (TFDS, or idx files via
`--config.data.idx_dir=DIR`): 10 images, l2reg 0.1, noise init."""

from configs import mnist


def get_config():
  config = mnist.get_config()
  config.data.dataset = 'fashion_mnist'
  config.num_steps = 100
  return config
