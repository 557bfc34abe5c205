"""The model the distilled data is made for: a linear classifier."""

import flax.linen as nn
import jax


class LinearClassifier(nn.Module):
  """Multiclass logistic regression: logits = flatten(x) @ W, no bias.

  Its params pytree, {'params': {'Dense_0': {'kernel': (num_inputs,
  num_classes)}}}, is what the inner solver optimizes; the inputs are the
  pixels or a feature map's features (`features.py`).
  """
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes, use_bias=False)(x)
