"""The seed's setting on MNIST (TFDS, or idx files via
`--config.data.idx_dir=DIR`): 10 images, l2reg 0.1, noise init."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'mnist'
  config.data.validation_size = 5000
  config.num_steps = 200
  config.log_every_steps = 10
  config.eval_every_steps = 50
  config.checkpoint_every_steps = 50
  return config
