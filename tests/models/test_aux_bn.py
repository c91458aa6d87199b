"""Auxiliary BatchNorm sets (AdvProp, Xie thesis ch. 7): isolation, export, equivalence."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.errors import ConfigError
from advjax.models import aux_bn, create_model, norms

SHAPE = (4, 8, 8, 3)


def _random_like(tree, seed):
  """Random values of `tree`'s structure (eval_shape leaves), variances positive."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "var" or name.startswith("scale"):
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
    return jnp.asarray(0.3 * rng.normal(size=leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, tree)


def _variables(model, sets, seed=0):
  x = jnp.zeros(SHAPE)
  main = _random_like(jax.eval_shape(model.init, jax.random.key(0), x), seed)
  with_sets = aux_bn.add_aux_sets(model, main, sets, x)
  # Move the fresh sets away from their (1, 0) initialisation so the paths differ.
  return _random_like(with_sets, seed + 1) | {"params": _random_like(with_sets["params"], seed + 1)}


def _images(seed=0):
  return jax.random.uniform(jax.random.key(seed, impl="rbg"), SHAPE)


def _changed(before, after):
  return not all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), before, after)))


@pytest.mark.parametrize("momentum", ["0.9", "0.99"])
def test_aux_batchnorm_matches_flax_batchnorm(momentum):
  x = 3.0 * jax.random.normal(jax.random.key(1, impl="rbg"), (6, 4, 4, 5)) + 1.0
  ref = nn.BatchNorm(use_running_average=False, momentum=float(momentum), epsilon=1e-5)
  aux = norms.make_norm(f"aux_batchnorm:adv,{momentum}", use_running_average=False)
  ref_vars = {"params": {"scale": jnp.linspace(0.5, 2, 5), "bias": jnp.linspace(-1, 1, 5)},
              "batch_stats": {"mean": jnp.full(5, 0.3), "var": jnp.full(5, 2.0)}}
  aux_vars = {"params": {"scale_adv": ref_vars["params"]["scale"], "bias_adv": ref_vars["params"]["bias"]},
              "batch_stats_adv": ref_vars["batch_stats"]}
  y_ref, s_ref = ref.apply(ref_vars, x, mutable=["batch_stats"])
  y_aux, s_aux = aux.apply(aux_vars, x, mutable=["batch_stats_adv"])
  np.testing.assert_allclose(y_aux, y_ref, rtol=1e-6, atol=1e-6)
  for k in ("mean", "var"):
    np.testing.assert_allclose(s_aux["batch_stats_adv"][k], s_ref["batch_stats"][k], rtol=1e-6)
  eval_ref = nn.BatchNorm(use_running_average=True, momentum=float(momentum), epsilon=1e-5).apply(ref_vars, x)
  eval_aux = norms.make_norm(f"aux_batchnorm:adv,{momentum}", use_running_average=True).apply(aux_vars, x)
  np.testing.assert_allclose(eval_aux, eval_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["resnet20_tiny", "efficientnet_tiny"])
def test_each_pass_updates_only_its_own_collection(name):
  model = create_model(name, num_classes=5)
  variables = _variables(model, ("adv", "aug"))
  assert {"batch_stats", "batch_stats_adv", "batch_stats_aug"} <= set(variables)
  x = _images()
  collections = [k for k in variables if k != "params"]
  for bn_set, own in (("main", "batch_stats"), ("adv", "batch_stats_adv"), ("aug", "batch_stats_aug")):
    # Everything mutable: whatever the pass writes shows up in `state`.
    _, state = aux_bn.with_bn_set(model, bn_set).apply(
        variables, x, use_batch_stats=True, mutable=collections)
    for col in collections:
      assert _changed(variables[col], state[col]) == (col == own), (bn_set, col)
    assert aux_bn.collection(bn_set) == own


def test_sets_share_all_weights_but_normalise_differently():
  model = create_model("resnet20_tiny", num_classes=5)
  variables = _variables(model, ("adv",))
  x = _images()
  main = model.apply(variables, x)
  adv = aux_bn.with_bn_set(model, "adv").apply(variables, x)
  assert not np.allclose(main, adv, atol=1e-4)
  # The auxiliary path reads the shared conv weights: changing one changes it.
  bumped = jax.tree.map(lambda v: v, variables)
  bumped["params"]["conv1"]["kernel"] = variables["params"]["conv1"]["kernel"] * 2.0
  assert not np.allclose(aux_bn.with_bn_set(model, "adv").apply(bumped, x), adv, atol=1e-4)
  # Auxiliary params sit beside the main ones in the same layer.
  assert set(variables["params"]["bn1"]) == {"scale", "bias", "scale_adv", "bias_adv"}


@pytest.mark.parametrize("name", ["convnet_tiny", "efficientnet_tiny"])
def test_export_main_is_the_plain_model(name):
  model = create_model(name, num_classes=5)
  x = _images()
  variables = _variables(model, ("adv", "aug"))
  exported = aux_bn.export_main(variables)
  plain = jax.eval_shape(create_model(name, num_classes=5, norm="batchnorm").init, jax.random.key(0), x)
  assert jax.tree.structure(exported) == jax.tree.structure(plain)
  assert jax.tree.map(lambda a: a.shape, exported) == jax.tree.map(lambda a: a.shape, plain)
  assert aux_bn.aux_sets(exported) == ()
  np.testing.assert_array_equal(model.apply(exported, x), model.apply(variables, x))
  assert not np.allclose(model.apply(exported, x), aux_bn.with_bn_set(model, "adv").apply(variables, x),
                         atol=1e-4)


def test_add_aux_sets_matches_a_real_init():
  model = create_model("resnet20_tiny", num_classes=5)
  x = jnp.zeros(SHAPE)
  twin = aux_bn.with_bn_set(model, "adv")
  real = twin.init(jax.random.key(0, impl="rbg"), x)
  derived = aux_bn.add_aux_sets(model, model.init(jax.random.key(0, impl="rbg"), x), ("adv",), x)
  np.testing.assert_array_equal(derived["batch_stats_adv"]["layer1_0"]["bn1"]["var"],
                                real["batch_stats_adv"]["layer1_0"]["bn1"]["var"])
  assert jax.tree.structure(derived["batch_stats_adv"]) == jax.tree.structure(real["batch_stats_adv"])
  for path in (("bn1", "scale_adv"), ("layer2_0", "downsample_bn", "bias_adv")):
    a, b = derived["params"], real["params"]
    for key in path:
      a, b = a[key], b[key]
    np.testing.assert_array_equal(a, b)


def test_aux_sets_need_batchnorm():
  model = create_model("resnet20_tiny", num_classes=5, norm="groupnorm")
  with pytest.raises(ConfigError, match="needs norm 'batchnorm'"):
    aux_bn.with_bn_set(model, "adv")
  assert aux_bn.aux_norm("batchnorm:0.99", "adv") == "aux_batchnorm:adv,0.99"
  with pytest.raises(ConfigError):
    norms.check_norm("aux_batchnorm:main")
