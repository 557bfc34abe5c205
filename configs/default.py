"""Default config: scikit-learn's 8x8 digits, offline (the seed's setting).

Every field can be overridden on the command line, e.g.
`--config.inner.l2reg=0.01`. Variants import this file and change a few fields.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Initial images and minibatch order.

  config.data = ml_collections.ConfigDict()
  config.data.dataset = 'digits'  # mnist | fashion_mnist | cifar10 | digits
  # A directory of MNIST-format idx files (gzipped or not), read instead of
  # TFDS. Files of mnist and fashion_mnist must have the originals' digests
  # (a damaged file stops the run), unless verify_digests is False.
  config.data.idx_dir = config_dict.placeholder(str)
  config.data.verify_digests = True
  config.data.tfds_data_dir = config_dict.placeholder(str)  # Passed to TFDS.
  config.data.validation_size = 200  # Carved from the training split.
  config.data.split_seed = 0  # Fixes which training examples validate.
  # Preprocessing fit on the training split (eval.py applies the same):
  # per-channel normalization (minus mean, over std), then ZCA whitening
  # regularized by zca_reg times the mean eigenvalue. Off: pixels in [0, 1].
  config.data.normalize = False
  config.data.zca = False
  config.data.zca_reg = 0.1
  # Training examples per outer step (all devices together); unset: all.
  config.data.outer_batch_size = config_dict.placeholder(int)

  config.distill = ml_collections.ConfigDict()
  config.distill.images_per_class = 1
  # noise: N(0, 1) / num_pixels, as the seed | real: random training images
  # | means: means of images_per_class random groups of each class.
  config.distill.image_init = 'noise'
  # Learn soft labels (softmax of per-image logits) and the inner l2reg
  # (as its log) together with the images.
  config.distill.learn_labels = False
  config.distill.label_temperature = 0.2  # Initial logits: one_hot / this.
  config.distill.learn_l2reg = False
  # A learned l2reg stays at or above this: below, float32 cannot resolve
  # the inner solution.
  config.distill.l2reg_min = 1e-6
  # Learn a temperature of the outer loss (Platt scaling: its logits times
  # exp(log_temperature), starting at 1); the inner fit does not see it.
  config.distill.learn_temperature = False
  # Differentiable augmentation of the distilled images before the inner fit
  # of each training step (a new draw per feature network; validation and
  # eval.py never augment): none | auto (all, without flip on one-channel
  # images) | '_'-joined DSA transforms of color, crop, cutout, flip, scale,
  # rotate.
  config.distill.augment = 'none'

  # The inner model: a linear head on features of the images
  # (docs/features.md). pixels: the images themselves (the seed's model) |
  # conv: a random ConvNet without its dense layer (depth blocks of width
  # channels, norm instance | none) | mlp: depth random ReLU layers of width.
  # Each outer step draws nets_per_step random networks and averages the
  # outer loss over them; they need config.inner.warm_start=False.
  config.model = ml_collections.ConfigDict()
  config.model.features = 'pixels'
  config.model.width = 64
  config.model.depth = 3
  config.model.norm = 'instance'
  config.model.nets_per_step = 2
  # A pool of pool_size trained feature networks (FRePo, RCIG) instead of
  # fresh random ones: each step uses nets_per_step members in turn, then
  # trains them (pool_steps steps of pool_optimizer, adam | sgd, at
  # pool_learning_rate) on pool_data: 'distilled', the distilled set with its
  # current labels (FRePo), or 'real', the step's real minibatch (IDM); a
  # member is re-initialized after pool_max_updates such steps, initial ages
  # staggered. pool_size=0 (or pool_max_updates=0): no pool.
  config.model.pool_size = 0
  config.model.pool_data = 'distilled'
  config.model.pool_optimizer = 'adam'
  config.model.pool_learning_rate = 3e-4
  config.model.pool_steps = 1
  config.model.pool_max_updates = 100
  # The network itself as the inner model instead of a head on its features
  # (RCIG; inner_models/linearized.py): the base networks above (random, or
  # the pool's members, their heads random) linearized in their body, with
  # body_l2reg / 2 ||offset||^2 on the body's offset and config.inner.l2reg
  # on the head. Needs config.inner.loss='squared'; maxiter and tol below
  # bound its conjugate gradients, implicit_maxiter and implicit_tol those
  # of its implicit gradient. activation: relu | softplus (RCIG's while
  # distilling: its Hessian is informative), for the networks distilled on.
  config.model.linearize = False
  config.model.body_l2reg = 1e-3
  config.model.activation = 'relu'
  # softplus(beta x) / beta: 1 is softplus itself; larger is closer to the
  # evaluators' ReLU while still smooth (RCIG distils at 60).
  config.model.softplus_beta = 1.0

  config.inner = ml_collections.ConfigDict()
  # The head's loss: logistic (cross-entropy, the seed's) | squared (ridge
  # regression on the targets, in closed form on the k x k Gram matrix, as
  # KIP, RFAD, FRePo and RCIG; the solver settings below then play no
  # part). The outer loss is the cross-entropy either way.
  config.inner.loss = 'logistic'
  # gradient_descent | lbfgs | newton (linear model only; with direct below).
  config.inner.solver = 'gradient_descent'
  config.inner.tol = 1e-3  # Stop when the gradient norm is below this.
  config.inner.maxiter = 500
  config.inner.l2reg = 0.1  # Makes the inner problem strongly convex.
  config.inner.init = 'ones'  # ones | zeros: the solver's starting point.
  config.inner.warm_start = False  # Start from the previous step's solution.
  # Linear solve of the implicit gradient. gradient_descent and lbfgs:
  # normal_cg (jaxopt's default) | cg (the inner Hessian is symmetric) | lu
  # (dense). newton: direct (the factorization of its own steps).
  config.inner.implicit_solve = 'normal_cg'
  config.inner.implicit_tol = 1e-5  # CG's relative residual tolerance.
  config.inner.implicit_maxiter = 100  # Its steps (the linearized model).
  # The linearized model's CG loops as straight-line code, maxiter steps
  # each (XLA's CPU backend runs convolutions far slower inside a loop;
  # compilation takes longer), instead of while loops.
  config.inner.cg_unroll = False
  # A step whose inner solve ends above tol (maxiter reached, or no progress
  # in float32) is counted (inner_unconverged) and warned about once, and so
  # is one whose implicit CG ends above implicit_tol where the model counts
  # it (implicit_unconverged: the linearized model); with strict, it stops
  # the run instead.
  config.inner.strict = False

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'adam'  # sgd | momentum | adam
  config.optimizer.learning_rate = 0.01
  config.optimizer.schedule = 'constant'  # constant | cosine | warmup_cosine
  config.optimizer.warmup_steps = 0  # For warmup_cosine.
  config.optimizer.momentum = 0.9  # Used by `momentum` only.

  # eval.py: baselines of the same size (and the full training split) are
  # fit with L-BFGS on hard labels, with the l2reg of this grid that does
  # best on the validation split.
  config.eval = ml_collections.ConfigDict()
  config.eval.l2reg_grid = (1e-1, 1e-2, 1e-3, 1e-4)
  config.eval.random_draws = 5  # Draws of random real images.
  config.eval.baseline_tol = 1e-4
  config.eval.baseline_maxiter = 2000
  # Evaluators: linear (the fits above) and networks trained from scratch on
  # each set, the field's protocol (docs/evaluation.md): convnet | mlp, and
  # convnet_noaug | mlp_noaug: the same recipe without augmentation.
  config.eval.nets = ('linear',)
  # The networks' recipe: a preset below, named in every row it produces.
  config.eval.net_preset = 'paper'
  kernel = dict(width=128, depth=3, norm='none', mlp_width=128, mlp_depth=2,
                epochs=1, full_data_epochs=50, batch_size=256,
                learning_rate=1e-4, momentum=0.0, weight_decay=0.0, seeds=5,
                augment='crop_scale_rotate_cutout', optimizer='adam',
                loss='mse', steps=2000, steps_one_per_class=1000,
                warmup_steps=500)
  config.eval.net_presets = ml_collections.ConfigDict({
      # DC/DSA: ConvNet-3 of width 128 with instance norm, 1000 epochs of
      # SGD with DSA augmentation ('auto': all transforms, without flip for
      # one-channel images), mean over 5 networks.
      'paper': dict(width=128, depth=3, norm='instance', mlp_width=128,
                    mlp_depth=2, epochs=1000, full_data_epochs=50,
                    batch_size=256, learning_rate=0.01, momentum=0.9,
                    weight_decay=5e-4, seeds=5, augment='auto'),
      # The same protocol, narrower and shorter: the six *_ipcN configs'
      # ConvNet rows in about half an hour on 2 CPU cores.
      'cpu': dict(width=32, depth=3, norm='instance', mlp_width=128,
                  mlp_depth=2, epochs=150, full_data_epochs=2,
                  batch_size=256, learning_rate=0.01, momentum=0.9,
                  weight_decay=5e-4, seeds=5, augment='auto'),
      # The kernel methods' protocol (RCIG's eval.py, as FRePo's):
      # ConvNet-3 of width 128 without normalization, Adam at 1e-4 with 500
      # warm-up steps and cosine decay, the squared loss on the targets,
      # 2000 steps (1000 at one image per class), no weight decay, 5
      # networks (docs/evaluation.md says where it differs).
      'kernel': kernel,
      # The same protocol for 2 CPU cores: width 32, all the steps (at
      # this rate fewer leave the networks far from trained).
      'kernel_cpu': {**kernel, 'width': 32, 'full_data_epochs': 2},
  })
  # Set, any of these replaces the preset's value (and the rows' recipe
  # name lists it): net_width, net_depth, net_norm (instance | none), the
  # MLP's net_mlp_width and net_mlp_depth (hidden layers), net_epochs,
  # net_full_data_epochs, net_batch_size, net_learning_rate, net_momentum,
  # net_weight_decay, net_seeds, net_augment ('_'-joined DSA transforms of
  # color, crop, cutout, flip, scale, rotate; none; auto), net_optimizer
  # (sgd | adam), net_loss (cross_entropy | mse), net_steps,
  # net_steps_one_per_class, net_warmup_steps (see net_train.Recipe).
  for field, kind in (('width', int), ('depth', int), ('norm', str),
                      ('mlp_width', int), ('mlp_depth', int), ('epochs', int),
                      ('full_data_epochs', int), ('batch_size', int),
                      ('learning_rate', float), ('momentum', float),
                      ('weight_decay', float), ('seeds', int),
                      ('augment', str), ('optimizer', str), ('loss', str),
                      ('steps', int), ('steps_one_per_class', int),
                      ('warmup_steps', int)):
    config.eval[f'net_{field}'] = config_dict.placeholder(kind)
  # How each device trains its networks (distillation/net_train.py):
  # vmapped (a loop over many steps per call) | unrolled (one step per call,
  # as straight-line code); unset: unrolled on CPU, vmapped on accelerators.
  # Either gives the same networks, up to float32 rounding.
  config.eval.net_path = config_dict.placeholder(str)
  # The sets the networks train on, by method (distilled, random_real,
  # class_means, full_data; the baselines with --baselines only) or
  # method/labels (distilled/hard): a subset reruns a costly row alone.
  config.eval.net_sets = ('distilled', 'random_real', 'class_means',
                          'full_data')
  # Also train the networks on the whole training split (the ceiling;
  # costly), caching the row under net_cache_dir (unset: the workdir).
  config.eval.net_full_data = False
  config.eval.net_cache_dir = config_dict.placeholder(str)
  # The set eval.py reports (distillation/selection.py): inner, train.py's
  # best checkpoint by the inner model's validation accuracy | a network
  # evaluator above (convnet, ...): of step 0 (the initial images), the
  # checkpoints at multiples of select_every_steps (train.py keeps them),
  # the newest and the best, the one whose select_seeds networks of that
  # evaluator's recipe, trained with hard labels, do best on validation.
  config.eval.select = 'inner'
  config.eval.select_seeds = 2
  config.eval.select_every_steps = config_dict.placeholder(int)

  config.num_steps = 200  # Outer steps.
  config.steps_per_dispatch = 1  # Outer steps per device call (lax.scan).
  config.log_every_steps = 10
  config.progress_every_secs = 10.0  # Steps/s and ETA in the log.
  config.eval_every_steps = 50  # Validation accuracy of the inner model.
  config.checkpoint_every_steps = 50
  config.max_checkpoints_to_keep = 3
  return config
