"""The auxiliary classifier's loss (`config.loss.aux_weight`), as torchvision trains its FCNs: L(out) + w L(aux).

Checked on a tiny FCN with 'fcn_aux' against the two outputs read by hand
from the same training pass (same dropout key) and a NumPy cross-entropy;
the auxiliary classifier's parameters get gradients only when w > 0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from advjax import config as config_lib
from advjax import tasks
from advjax.errors import ConfigError
from advjax.models import create_model
from advjax.training import objectives

K = 5


def _np_cross_entropy(logits, labels):
  """-log softmax(logits)[label] averaged over each image's valid pixels, then over images, in float64."""
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, np.maximum(labels, 0)[..., None], -1)[..., 0]
  return np.mean([nll[i][labels[i] >= 0].mean() for i in range(len(labels))])


@pytest.fixture(scope="module")
def setup():
  model = create_model("convnet_dense_tiny", head="fcn_aux", num_classes=K, mean=(0.2,), std=(0.3,))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(0, 1, (2, 32, 32, 1)), jnp.float32)
  y = rng.integers(-1, K, (2, 32, 32)).astype(np.int32)
  variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, x, train=False)
  return model, variables, x, y


def _objective(model, weight, objective="erm"):
  config = config_lib.base_config()
  config.objective = objective
  config.loss.aux_weight = weight
  return objectives.build(config, model=model, task=tasks.Segmentation(K), schedule=optax.constant_schedule(1e-3),
                          total_steps=1, steps_per_epoch=1)


def test_the_loss_adds_the_weighted_auxiliary_loss(setup):
  model, variables, x, y = setup
  params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
  rng = jax.random.key(3)
  batch = {"image": x, "label": jnp.asarray(y)}
  out, updates = model.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"],
                             rngs={"dropout": rng})
  aux = [v for p, v in traverse_util.flatten_dict(updates["intermediates"]).items() if p[-1] == "aux_logits"][0][0]
  assert aux.shape == out.shape
  main_ce, aux_ce = _np_cross_entropy(out, y), _np_cross_entropy(aux, y)
  assert abs(main_ce - aux_ce) > 1e-3  # The two outputs differ, so a mix-up would show.
  for weight in (0.0, 0.5):
    loss, (new_state, _) = jax.jit(_objective(model, weight).loss)(params, state, batch, rng)
    np.testing.assert_allclose(float(loss), main_ce + weight * aux_ce, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves({"batch_stats": updates["batch_stats"]})):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_only_a_positive_weight_trains_the_auxiliary_classifier(setup):
  model, variables, x, y = setup
  batch = {"image": x, "label": jnp.asarray(y)}
  state = {"batch_stats": variables["batch_stats"]}
  for weight in (0.0, 0.5):
    grads = jax.jit(jax.grad(lambda p: _objective(model, weight).loss(p, state, batch, jax.random.key(1))[0]))(
        variables["params"])
    aux_norm = sum(float(jnp.sum(jnp.square(g))) for path, g in traverse_util.flatten_dict(grads).items()
                   if any("aux" in part for part in path))
    assert (aux_norm > 0) == (weight > 0)


def test_objectives_and_heads_without_an_auxiliary_loss_are_refused(setup):
  config = config_lib.base_config()
  config.objective = "uat_alternating"
  config.loss.aux_weight = 0.5
  with pytest.raises(ConfigError, match="loss.aux_weight.*does not train an auxiliary classifier"):
    config_lib.validate(config, num_devices=1)
  config.objective = "pgd_at"
  config_lib.validate(config, num_devices=1)
  model = create_model("convnet_dense_tiny", head="fcn", num_classes=K, mean=(0.2,), std=(0.3,))
  _, variables, x, y = setup
  plain = model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, x, train=False)
  with pytest.raises(ConfigError, match="needs a head with one auxiliary classifier"):
    _objective(model, 0.5).loss(plain["params"], {"batch_stats": plain["batch_stats"]},
                                {"image": x, "label": jnp.asarray(y)}, jax.random.key(1))
