"""A tiny variant of the default config for tests: a few seconds on CPU."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.validation_size = 100
  config.inner.maxiter = 100
  config.num_steps = 6
  config.log_every_steps = 2
  config.eval_every_steps = 3
  config.checkpoint_every_steps = 2
  config.progress_every_secs = 0.0
  return config
