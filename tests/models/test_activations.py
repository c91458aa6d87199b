"""Smooth activations of smooth adversarial training (Xie thesis, ch. 5) in every model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from advjax.errors import ConfigError
from advjax import registry
from advjax.models import MODELS, activations, create_model
from tests import numpy_values

TINY = sorted(name for name in MODELS if name.endswith("_tiny"))
ACTIVATIONS = ["relu", "softplus", "silu", "gelu", "tanh", "elu", "elu:0.5", "celu:1.5",
               "parametric_softplus", "parametric_softplus:5", "smooth_relu", "relu_softplus_grad"]
SHAPE = (2, 8, 8, 3)


def test_every_activation_is_covered():
  assert {registry.parse_name(a)[0] for a in ACTIVATIONS} == set(activations.ACTIVATIONS)
  assert "efficientnet_tiny" in TINY


def _x():
  return jnp.linspace(-2.0, 2.0, 81)


def test_parametric_softplus_is_eq_5_2_with_derivative_eq_5_3():
  x = _x()
  f = activations.get_activation("parametric_softplus")
  np.testing.assert_allclose(f(x), np.log1p(np.exp(10 * np.asarray(x, np.float64))) / 10, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.vmap(jax.grad(f))(x), jax.nn.sigmoid(10 * x), rtol=1e-5, atol=1e-6)


def test_relu_softplus_grad_is_relu_forward_and_softplus_backward():
  x = _x() + 0.0125  # Off the kink, where finite differences of softplus are smooth.
  alpha = 10.0
  act = activations.get_activation("relu_softplus_grad:10")
  np.testing.assert_array_equal(act(x), jax.nn.relu(x))
  grads = jax.vmap(jax.grad(act))(x)
  h = 1e-3
  x64 = np.asarray(x, np.float64)
  softplus = lambda v: np.logaddexp(0.0, alpha * v) / alpha  # noqa: E731
  finite = (softplus(x64 + h) - softplus(x64 - h)) / (2 * h)
  np.testing.assert_allclose(grads, finite, rtol=1e-3, atol=1e-4)
  # Through a vector-Jacobian product with a non-trivial cotangent too.
  w = jnp.cos(x)
  _, vjp = jax.vjp(act, x)
  np.testing.assert_allclose(vjp(w)[0], w * finite, rtol=1e-3, atol=1e-4)


def test_elu_celu_take_alpha():
  x = jnp.array([-1.0, 2.0])
  np.testing.assert_allclose(activations.get_activation("elu:0.5")(x), [0.5 * np.expm1(-1.0), 2.0], rtol=1e-6)
  np.testing.assert_allclose(activations.get_activation("celu:2")(x), [2 * np.expm1(-0.5), 2.0], rtol=1e-6)
  with pytest.raises(ConfigError):
    activations.check_activation("celu:0")


def _smooth_relu_alpha(variables):
  return activations.SmoothReLU.alpha_from_raw(variables["params"]["raw_alpha"])


def test_smooth_relu_is_eq_5_4_with_alpha_400():
  act = activations.SmoothReLU()
  x = _x()
  variables = act.init(jax.random.key(0, impl="rbg"), x)
  np.testing.assert_allclose(_smooth_relu_alpha(variables), 400.0, rtol=1e-5)
  x64 = np.asarray(x, np.float64)
  expected = np.where(x64 >= 0, x64 - np.log1p(400 * np.maximum(x64, 0)) / 400, 0.0)
  np.testing.assert_allclose(act.apply(variables, x), expected, rtol=1e-5, atol=1e-6)
  grads = jax.vmap(jax.grad(lambda v: act.apply(variables, v)))(x)
  np.testing.assert_allclose(grads, np.where(x64 >= 0, 400 * x64 / (1 + 400 * x64), 0.0), rtol=1e-4, atol=1e-5)


def test_smooth_relu_alpha_stays_positive_under_sgd():
  act = activations.SmoothReLU()
  x = jnp.linspace(0.0, 3.0, 64)
  variables = act.init(jax.random.key(0, impl="rbg"), x)
  # d/dalpha of SmoothReLU is positive on x > 0, so descending its sum drives alpha down.
  loss = lambda p: jnp.sum(act.apply({"params": p}, x))  # noqa: E731
  tx = optax.sgd(50.0)
  params, opt_state = variables["params"], tx.init(variables["params"])

  @jax.jit
  def step(params, opt_state):
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(2000):
    params, opt_state = step(params, opt_state)
  alpha = float(_smooth_relu_alpha({"params": params}))
  assert 0.0 < alpha < 1.0  # Pushed far down from 400, and still positive.
  assert np.isfinite(np.asarray(act.apply({"params": params}, x))).all()


@pytest.mark.parametrize("name", TINY)
def test_every_activation_builds_in_every_tiny_model(name):
  # Abstract evaluation (no compilation): init, forward and gradient trace for all pairs.
  x = jax.ShapeDtypeStruct(SHAPE, jnp.float32)
  for activation in ACTIVATIONS:
    model = create_model(name, num_classes=5, activation=activation)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert logits.shape == (2, 5), (name, activation)
    grads = jax.eval_shape(jax.grad(lambda v, x: jnp.sum(model.apply(v, x))), variables, x)
    assert jax.tree.structure(grads) == jax.tree.structure(variables)
    raw = [p for p, _ in jax.tree_util.tree_leaves_with_path(variables["params"]) if p[-1].key == "raw_alpha"]
    # SmoothReLU owns one alpha per use site; no other activation has parameters.
    assert (len(raw) > 1) == (activation == "smooth_relu"), (name, activation)


def _numpy_variables(model, x):
  """Variables of `model` drawn with numpy from eval_shape shapes (smooth ReLU's alpha at 400)."""
  return numpy_values.draw_like(jax.eval_shape(model.init, jax.random.key(0), x), fixed={"raw_alpha": 400.0})


def test_activations_run_and_smooth_relu_trains_in_efficientnet_tiny():
  x = jax.random.uniform(jax.random.key(0, impl="rbg"), SHAPE)
  logits = {}
  # Compiled runs of a few (every pair is traced above): the ReLU twins and two smooth ones.
  for activation in ("relu", "relu_softplus_grad", "parametric_softplus", "celu:1.5"):
    model = create_model("efficientnet_tiny", num_classes=5, activation=activation)
    variables = _numpy_variables(model, x)
    logits[activation] = jax.jit(model.apply)(variables, x)
    assert np.isfinite(np.asarray(logits[activation])).all(), activation
  np.testing.assert_array_equal(logits["relu_softplus_grad"], logits["relu"])  # Same forward pass.
  model = create_model("efficientnet_tiny", num_classes=5, activation="smooth_relu")
  variables = _numpy_variables(model, x)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({**variables, "params": p}, x))))(variables["params"])
  raw = [g for p, g in jax.tree_util.tree_leaves_with_path(grads) if p[-1].key == "raw_alpha"]
  assert raw and all(np.isfinite(np.asarray(g)) for g in raw)
  assert any(float(jnp.abs(g)) > 0 for g in raw)


def test_softplus_grad_diagnostic_picks_the_side():
  from advjax.training import sat
  model = create_model("convnet_tiny", num_classes=5)
  expected = {"": ("relu", "relu"), "attacker": ("relu_softplus_grad:10.0", "relu"),
              "weights": ("relu", "relu_softplus_grad:10.0"),
              "both": ("relu_softplus_grad:10.0", "relu_softplus_grad:10.0")}
  for mode, activations in expected.items():
    attack_model, train_model = sat.attacker_and_trainee(model, sat.SATConfig(softplus_grad=mode))
    assert (attack_model.activation, train_model.activation) == activations, mode
  with pytest.raises(ConfigError, match="activation 'relu'"):
    sat.softplus_grad_model(create_model("convnet_tiny", num_classes=5, activation="silu"), 10.0)
