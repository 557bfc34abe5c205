"""What the outer step asks of an inner model.

An inner model is fit on the distilled set, given the inner problem's
hyperparameters (l2reg, images, targets), and predicts logits of real images
from that fit. The fit is differentiable in the hyperparameters: each model
carries its own implicit-differentiation rule (`inner.py`'s solvers, or the
linearized network's `jaxopt.implicit_diff.custom_root`), so the outer step
takes `jax.vjp` of `fit`, pulls the outer loss's cotangent back through it and
never knows which model it has (`outer.Distiller`).

A step's *context* is what its fits share with its logits: nothing for the
pixels, the step's feature networks or pool members for the others. Fits and
logits are stacked over the context's members (networks); the outer loss
averages over them.
"""

import abc
from collections.abc import Callable
from typing import Any

import jax

from distillation import errors
from distillation import inner

Params = Any
# (l2reg, flat images (k, num_pixels), targets (k, num_classes)).
Hyper = tuple[jax.Array, jax.Array, jax.Array]
# The distilled images as member `index` of the context sees them: the
# identity, or a random augmentation drawn per member (`outer.Distiller`).
Transform = Callable[[jax.Array, int], jax.Array]


def identity(images: jax.Array, index: int) -> jax.Array:
  del index
  return images


class InnerModel(abc.ABC):
  """An inner model; subclasses set `name` and `initial_params` (the
  solver's start and what a new outer state carries as inner_params)."""

  name: str
  initial_params: Params
  # Whether the fit is a linear head on features (`linear_context`).
  linear_head: bool = False
  # Whether `fit` counts its implicit-gradient solves that ended above their
  # tolerance through `probe` (see `fit`).
  counts_implicit_solves: bool = False

  def init_state(self, key: jax.Array) -> dict[str, Any]:
    """What the outer state carries for the model (a pool of networks);
    empty, and no part of a checkpoint, by default."""
    del key
    return {}

  @abc.abstractmethod
  def context(self, state: dict[str, Any], step: jax.Array,
              key: jax.Array) -> Any:
    """The training step's context, from the model's state and the step's
    key (the same on every device)."""

  @abc.abstractmethod
  def eval_context(self, key: jax.Array) -> Any:
    """A fixed context for validation and eval.py, so that the scores of
    different steps compare like with like."""

  @abc.abstractmethod
  def fit(self, context: Any, hyper: Hyper, init: Params | None = None,
          transform: Transform = identity,
          probe: jax.Array | None = None) -> inner.InnerResult:
    """The inner solution on the distilled set, from `init` (None: the
    model's own start), differentiable in `hyper`.

    probe: a zero scalar. A model that `counts_implicit_solves` makes its
    cotangent in the backward pass the number of implicit-gradient solves
    that ended above their tolerance (a backward pass returns nothing else);
    the others ignore it.
    """

  @abc.abstractmethod
  def logits(self, context: Any, params: Params,
             images: jax.Array) -> jax.Array:
    """Logits (members, n, num_classes) of flat real `images` under the fit
    `params`."""

  def next_params(self, previous: Params, fitted: Params) -> Params:
    """The inner_params the outer state keeps after a step."""
    del fitted
    return previous

  def update(self, state: dict[str, Any], step: jax.Array, key: jax.Array,
             hyper: Hyper, batch: dict[str, jax.Array]) -> dict[str, Any]:
    """The model's state after the outer update (`hyper` is the updated
    set's); runs under `parallel.pmap`, `batch` being this device's shard."""
    del step, key, hyper, batch
    return state

  def linear_context(self, key: jax.Array) -> Any:
    """The context of the linear evaluator (`linear_eval.py`): one member,
    the first of `eval_context(key)`, whose `features` the head and its
    baselines are fit on. Only linear heads have one."""
    del key
    raise errors.UserError(
        f"config.eval.nets has 'linear', which refits a linear head, but the "
        f'inner model is {self.name!r}; drop linear from config.eval.nets.')

  def features(self, context: Any, images: jax.Array) -> jax.Array:
    """The features (members, n, num_features) a linear head is fit on."""
    raise NotImplementedError(self.name)
