"""The inner models, one module each, behind `base.InnerModel`:

* pixels: the seed's linear classifier on the images (`pixels.py`);
* feature_head: a linear head on the features of random networks or of a
  pool's members (`feature_head.py`);
* linearized: the network itself, linearized in its body around random or
  pool base networks (RCIG; `linearized.py`).

`config.model.features` names the network ('pixels' for none) and
`config.model.linearize` chooses between its head and the whole network.
"""

import ml_collections

from distillation import errors
from distillation import features
from distillation import input_pipeline
from distillation import pool
from distillation.inner_models import base
from distillation.inner_models import feature_head
from distillation.inner_models import linearized
from distillation.inner_models import pixels

InnerModel = base.InnerModel


def make(config: ml_collections.ConfigDict,
         info: input_pipeline.DatasetInfo) -> base.InnerModel:
  """The configured inner model (a config without a model section, as in
  checkpoints written before there was one, means pixels)."""
  model_config = config.get('model')
  name = 'pixels' if model_config is None else model_config.features
  if name not in features.FEATURES:
    raise errors.UserError(
        f'config.model.features={name!r} is unknown; use one of '
        f'{", ".join(features.FEATURES)}.')
  if name == 'pixels':
    if pool.enabled(model_config):
      raise errors.UserError(
          f'config.model.pool_size={model_config.pool_size} needs feature '
          "networks; set config.model.features to 'conv' or 'mlp'.")
    if model_config is not None and model_config.get('linearize'):
      raise errors.UserError(
          'config.model.linearize=True needs a network to linearize; set '
          "config.model.features to 'conv' or 'mlp'.")
    return pixels.Pixels(config, info)
  if model_config.get('linearize'):
    return linearized.Linearized(config, info)
  return feature_head.FeatureHead(config, info)
