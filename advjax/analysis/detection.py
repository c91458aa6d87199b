"""Detectability of adversarial perturbations (sec. 3.4, figures 6-7, appendix G).

Following Metzen et al. (2017a), a separate convnet, the *detector*, is
trained on the binary task clean (label 0) versus adversarial (label 1); the
universality paper applies it directly to the input images, not to the
classifier's feature maps. `Detector` follows the layout of Metzen et al.'s
detector subnetwork, here on the raw image:

  conv3x3(96) - ReLU - maxpool2 - conv3x3(192) - ReLU - maxpool2 -
  conv3x3(192) - ReLU - conv1x1(2) - global average pooling -> 2 logits

(`features` and `pools` change the widths and drop pools for small inputs;
28x28x1 digits become 14x14 and 7x7 maps). It has no BatchNorm, so it has no
mutable state and `detector_train_step` is a plain
`(state, clean_x, adv_x) -> (state, metrics)`: a batch of N clean and N
adversarial images, cross-entropy against labels 0 and 1, one optimiser step.

Detectability (figure 6) is the detector's accuracy on held-out clean and
adversarial images together, each counted once: (clean images called clean +
adversarial images called adversarial) / (their total). Detectors trained on
the perturbations of one epoch are evaluated on those of every epoch
(`detection_matrix`: row i the detector of epoch i, column j the perturbations
of epoch j; its diagonal is the "respective epoch" line, a row the "trained in
fixed epoch" lines).

Figure 7 turns the universal adversary of appendix D on the detector: the
perturbation maximises the detector's predicted probability of *adversarial*
(and nothing of the classifier), which is `detector_activation_loss`. With
`advjax.attacks.universal` that is the detector as `logits_fn`, the targeted
'cross_entropy' loss and target_class = ADVERSARIAL, since the targeted
cross-entropy is log p(target | x). The figure also reports the detector's
mean probability of adversarial on the perturbed inputs
(`mean_adversarial_probability`, 12% or less after epoch 0).
`detector_evasion_loss` is the converse objective, not used in the paper: a
perturbation that keeps the detector saying *clean* while fooling the
classifier, log p_det(clean | x + xi) + weight * J(theta, x + xi, y).
Both losses map (perturbed images, labels) to one value per example, larger
meaning a stronger attack; `universal_objective` averages one over a batch
for a universal xi, and its gradient replaces the classifier's loss gradient
in the universal update.
"""

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from advjax.cpu import compilation
from advjax.analysis import epochs as epochs_lib
from advjax.errors import ConfigError, DataError

CLEAN = 0
ADVERSARIAL = 1
PerExampleLoss = Callable[[jax.Array, jax.Array], jax.Array]


class Detector(nn.Module):
  """Metzen et al.'s detector on the raw image; 2 logits (clean, adversarial).

  Attributes:
    features: widths of the 3x3 convolutions.
    pools: whether a 2x2 max pool (stride 2) follows each convolution.
  """

  features: Sequence[int] = (96, 192, 192)
  pools: Sequence[bool] = (True, True, False)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x [batch, H, W, C] in [0, 1] -> [batch, 2] logits (`train` is unused: no dropout/BN)."""
    del train
    if len(self.features) != len(self.pools):
      raise ConfigError(f"detector features {tuple(self.features)} and pools "
                        f"{tuple(self.pools)} differ in length")
    for i, (width, pool) in enumerate(zip(self.features, self.pools)):
      x = nn.relu(nn.Conv(width, (3, 3), padding="SAME", name=f"conv{i + 1}")(x))
      if pool:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.Conv(2, (1, 1), name="logits")(x)
    return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


MetzenDetector = functools.partial(Detector, features=(96, 192, 192), pools=(True, True, False))
TinyDetector = functools.partial(Detector, features=(8, 8, 8), pools=(True, False, False))


def create_detector_state(rng: jax.Array, model: nn.Module, image_shape,
                          tx: optax.GradientTransformation) -> train_state.TrainState:
  """Initialises a detector and its optimiser.

  Args:
    rng: PRNG key of the initialisation.
    model: a `Detector` (or any linen module mapping images to [batch, 2]).
    image_shape: (H, W, C).
    tx: optax optimiser.

  Returns:
    Flax `TrainState` with `apply_fn = model.apply`.
  """
  params = compilation.jit(model.init)(rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32))["params"]
  return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def _binary_labels(num_clean: int, num_adv: int) -> jax.Array:
  return jnp.concatenate([jnp.full((num_clean,), CLEAN, jnp.int32),
                          jnp.full((num_adv,), ADVERSARIAL, jnp.int32)])


@compilation.jit
def detector_train_step(state: train_state.TrainState, clean_x: jax.Array,
                        adv_x: jax.Array) -> tuple[train_state.TrainState, dict]:
  """One optimiser step of the detector on clean (label 0) and adversarial (label 1) images.

  Args:
    state: `TrainState` whose `apply_fn({'params': p}, x)` gives [batch, 2] logits.
    clean_x: [B, H, W, C] clean images in [0, 1].
    adv_x: [B', H, W, C] adversarial images in [0, 1].

  Returns:
    (new state, {'loss': mean cross-entropy over the B + B' images,
    'accuracy': fraction classified correctly}), both computed before the step.
  """
  x = jnp.concatenate([clean_x, adv_x])
  labels = _binary_labels(clean_x.shape[0], adv_x.shape[0])

  def loss_fn(params):
    logits = state.apply_fn({"params": params}, x)
    return jnp.mean(epochs_lib.cross_entropy(logits, labels)), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
  return state.apply_gradients(grads=grads), {"loss": loss, "accuracy": accuracy}


def train_detector(state: train_state.TrainState, clean_x, adv_x, rng: jax.Array,
                   num_epochs: int, batch_size: int) -> tuple[train_state.TrainState, list[dict]]:
  """Host loop of `detector_train_step` over shuffled pairs (x_k, x_k^adv).

  Args:
    state: initial detector state.
    clean_x: [N, H, W, C] clean training images.
    adv_x: [N, H, W, C] their adversarial versions.
    rng: PRNG key of the shuffling; epoch e uses fold_in(rng, e).
    num_epochs: passes over the N pairs.
    batch_size: pairs per step (each step sees 2 * batch_size images); the
      last incomplete batch of an epoch is dropped, so one compile serves all.

  Returns:
    (trained state, per-epoch mean metrics).

  Raises:
    DataError: clean and adversarial sets differ in shape or are smaller than a batch.
  """
  if np.shape(clean_x) != np.shape(adv_x):
    raise DataError(f"clean_x {np.shape(clean_x)} and adv_x {np.shape(adv_x)} differ in shape")
  n = np.shape(clean_x)[0]
  if not 1 <= batch_size <= n:
    raise DataError(f"batch_size={batch_size} must be in [1, {n}] (the number of pairs)")
  clean_x, adv_x = np.asarray(clean_x), np.asarray(adv_x)
  history = []
  for epoch in range(num_epochs):
    order = np.asarray(jax.random.permutation(jax.random.fold_in(rng, epoch), n))
    metrics = []
    for start in range(0, n - batch_size + 1, batch_size):
      idx = order[start:start + batch_size]
      state, m = detector_train_step(state, jnp.asarray(clean_x[idx]), jnp.asarray(adv_x[idx]))
      metrics.append(m)
    history.append({k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]})
  return state, history


def detector_logits_fn(state: train_state.TrainState) -> epochs_lib.LogitsFn:
  """`x -> [batch, 2]` closure over a trained detector's parameters."""
  return lambda x: state.apply_fn({"params": state.params}, x)


def detector_accuracy(detector_logits_fn: epochs_lib.LogitsFn, clean_x, adv_x,
                      batch_size: int | None = None) -> float:
  """Detection accuracy on held-out clean and adversarial images (figure 6).

  Args:
    detector_logits_fn: `x -> [batch, 2]` logits (clean, adversarial).
    clean_x: [N, H, W, C] clean images.
    adv_x: [N', H, W, C] adversarial images.
    batch_size: examples per jitted call.

  Returns:
    (#clean predicted CLEAN + #adversarial predicted ADVERSARIAL) / (N + N').
  """
  clean_hits = np.sum(epochs_lib.predictions(detector_logits_fn, clean_x, batch_size) == CLEAN)
  adv_hits = np.sum(epochs_lib.predictions(detector_logits_fn, adv_x, batch_size) == ADVERSARIAL)
  return float((clean_hits + adv_hits) / (np.shape(clean_x)[0] + np.shape(adv_x)[0]))


def detection_matrix(detector_logits_fns: Sequence[epochs_lib.LogitsFn], clean_x, adv_sets,
                     batch_size: int | None = None) -> np.ndarray:
  """Accuracy of the detector trained at epoch i on the perturbations of epoch j.

  Args:
    detector_logits_fns: I detectors, `x -> [batch, 2]`.
    clean_x: [N, H, W, C] held-out clean images (shared by all epochs).
    adv_sets: [J, N', H, W, C] held-out adversarial images per epoch.
    batch_size: examples per jitted call.

  Returns:
    [I, J] float64 detection accuracies, as in `detector_accuracy`.
  """
  epochs_lib.check_epochs(detector_logits_fns)
  n_adv = np.shape(adv_sets)[1]
  _, adv_hits = epochs_lib.cross_evaluate(detector_logits_fns, adv_sets,
                                          np.full((n_adv,), ADVERSARIAL, np.int32), batch_size)
  clean_hits = np.stack([
      np.sum(epochs_lib.predictions(fn, clean_x, batch_size) == CLEAN)
      for fn in detector_logits_fns])
  total = np.shape(clean_x)[0] + n_adv
  return (clean_hits[:, None] + adv_hits.sum(axis=2).T) / total


def detector_activation_loss(detector_logits_fn: epochs_lib.LogitsFn,
                             target: int = ADVERSARIAL) -> PerExampleLoss:
  """Figure 7's objective: the detector's log-probability of `target`.

  Args:
    detector_logits_fn: `x -> [batch, 2]`.
    target: ADVERSARIAL (the paper) or CLEAN.

  Returns:
    `loss(x, y) -> [batch]` = log p_det(target | x) for perturbed images x
    [batch, H, W, C]; `y` is ignored.
  """
  if target not in (CLEAN, ADVERSARIAL):
    raise ConfigError(f"detector target={target!r}: must be CLEAN (0) or ADVERSARIAL (1)")

  def loss(x, y):
    del y
    return jax.nn.log_softmax(detector_logits_fn(x).astype(jnp.float32), axis=-1)[:, target]

  return loss


def detector_evasion_loss(classifier_logits_fn: epochs_lib.LogitsFn,
                          detector_logits_fn: epochs_lib.LogitsFn,
                          weight: float = 1.0) -> PerExampleLoss:
  """Objective of a perturbation that fools the classifier and looks clean to the detector.

  Args:
    classifier_logits_fn: `x -> [batch, classes]`.
    detector_logits_fn: `x -> [batch, 2]`.
    weight: factor on the classifier's cross-entropy; 0 only evades the detector.

  Returns:
    `loss(x, y) -> [batch]` = log p_det(CLEAN | x) + weight * J(theta, x, y) on
    perturbed images x [batch, H, W, C] with true labels y [batch]; larger is
    a stronger attack.
  """
  evade = detector_activation_loss(detector_logits_fn, CLEAN)

  def loss(x, y):
    return evade(x, y) + weight * epochs_lib.cross_entropy(classifier_logits_fn(x), y)

  return loss


def universal_objective(per_example_loss: PerExampleLoss, xi: jax.Array, x: jax.Array,
                        y: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Masked batch mean of a per-example loss on clip(x + xi, 0, 1).

  `jax.grad` of this with respect to xi is the batch gradient grad^D(Xi) of
  appendix D with the classifier's loss replaced by `per_example_loss`.

  Args:
    per_example_loss: `(x, y) -> [batch]`, e.g. `detector_activation_loss(...)`.
    xi: [H, W, C] universal perturbation.
    x: [batch, H, W, C] images in [0, 1].
    y: [batch] labels.
    mask: optional [batch] weights (0 for padding).

  Returns:
    Scalar mean loss.
  """
  values = per_example_loss(jnp.clip(x + xi, 0.0, 1.0), y)
  if mask is None:
    return jnp.mean(values)
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@functools.partial(compilation.jit, static_argnames=("logits_fn",))
def _adversarial_probability(logits_fn, x, xi):
  return jax.nn.softmax(logits_fn(jnp.clip(x + xi, 0.0, 1.0)).astype(jnp.float32))[:, ADVERSARIAL]


def mean_adversarial_probability(detector_logits_fn: epochs_lib.LogitsFn, x, xi,
                                 batch_size: int | None = None) -> float:
  """Mean detector probability of ADVERSARIAL on clip(x + xi, 0, 1) (figure 7's numbers).

  Args:
    detector_logits_fn: `x -> [batch, 2]`.
    x: [N, H, W, C] images in [0, 1].
    xi: [H, W, C] universal perturbation.
    batch_size: examples per jitted call.

  Returns:
    The mean over the N images.
  """
  xi = jnp.asarray(xi)
  probs = epochs_lib.map_batched(
      lambda xb: _adversarial_probability(detector_logits_fn, xb, xi), [x], batch_size)
  return float(np.mean(probs))
