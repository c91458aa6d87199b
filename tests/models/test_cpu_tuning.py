"""The models with the CPU tuning switched off are plain Flax, and compute what the tuned ones compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.cpu import tuning
from advjax.models import create_model
from tests.numpy_values import draw_like

# Plain, strided and depthwise convolutions, 2x2 and padded overlapping 3x3 max pools, BatchNorm.
CASES = [("convnet_tiny", (28, 28, 1)), ("resnet50_tiny", (16, 16, 3)), ("efficientnet_tiny", (16, 16, 3))]


def _pass(model, variables, x, y):
  """Training-mode loss, its gradients in the parameters and the input, and the new batch statistics."""

  def loss(params, images):
    logits, updates = model.apply({**variables, "params": params}, images, train=True,
                                  mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0]), updates

  (value, updates), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(variables["params"], x)
  return value, grads, updates


@pytest.mark.parametrize("name,shape", CASES)
def test_tuned_and_plain_layers_agree(monkeypatch, name, shape):
  model = create_model(name, num_classes=10)
  x = jax.random.uniform(jax.random.key(0), (4, *shape))
  y = jnp.arange(4) % 10
  variables = draw_like(jax.eval_shape(lambda a: model.init(jax.random.key(1), a, train=False), x))
  results, programs = {}, {}
  for mode in ("all_cores", "off"):
    monkeypatch.setenv(tuning.ENV, mode)
    # A fresh closure per mode: the layers are chosen when the program is traced.
    results[mode] = jax.jit(lambda v, a, b: _pass(model, v, a, b))(variables, x, y)
    programs[mode] = str(jax.make_jaxpr(lambda v, a: model.apply(v, a, train=False, use_batch_stats=True,
                                                                 mutable=["batch_stats"]))(
        variables, x))
  # Switched off, nothing of advjax.cpu is in the program: no custom gradient (the tuned convolution
  # and BatchNorm have one), and the max pools are XLA's reduce-window (the tuned ones are not).
  assert "custom_vjp_call" not in programs["off"] and "custom_vjp_call" in programs["all_cores"]
  if name != "efficientnet_tiny":
    assert "reduce_window_max" in programs["off"] and "reduce_window_max" not in programs["all_cores"]
  # Loss, parameter gradients, input gradient, batch statistics: each compared on its own scale
  # (a convolution bias before a BatchNorm has a gradient that is zero but for rounding).
  (t_value, t_grads, t_stats), (p_value, p_grads, p_stats) = results["all_cores"], results["off"]
  for tuned, plain in ((t_value, p_value), (t_grads[0], p_grads[0]), (t_grads[1], p_grads[1]), (t_stats, p_stats)):
    tuned, plain = jax.tree.leaves(tuned), jax.tree.leaves(plain)
    assert len(tuned) == len(plain) > 0
    scale = max(float(jnp.max(jnp.abs(b))) for b in plain)
    for a, b in zip(tuned, plain):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * scale)
