"""Properties of every registered model, on the tiny variants.

The full-size models are checked only through `jax.eval_shape` (parameter
counts against published figures, output shapes), which costs no memory.
Layer-level agreement with independent PyTorch code is in tests/test_bridge.py.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.errors import ConfigError
from advjax.models import MODELS, ClassifierHead, Network, activations, create_model, norms

TINY = ["convnet_tiny", "convnet_dense_tiny", "resnet20_tiny", "preact_resnet18_tiny", "wrn_tiny", "resnet50_tiny",
        "efficientnet_tiny", "resnet50_dilated_tiny", "vgg16_tiny"]
# Models with dropout, by the name of their first BatchNorm (which dropout cannot affect).
WITH_DROPOUT = {"convnet_tiny": "bn1", "convnet_dense_tiny": "bn1", "efficientnet_tiny": "stem_bn"}
NUM_CLASSES = 5
SHAPE = (2, 8, 8, 3)
# rbg: a dropout mask from a threefry key costs seconds of compilation on CPU.
DROPOUT_KEY = jax.random.key(2, impl="rbg")


def _images(shape=SHAPE, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape)


def _init(model, x, seed=1):
  """Random variables with the model's structure, drawn with numpy.

  `model.init` compiles a random-number kernel per parameter shape, which
  costs seconds per model on CPU; `test_init` covers init itself. The running
  statistics are drawn away from (0, 1) so that modes using them differ
  visibly from modes using batch statistics.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]) / 2)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, size=leaf.shape)
    return 0.1 * rng.normal(size=leaf.shape)

  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  return jax.tree_util.tree_map_with_path(
      lambda p, leaf: jnp.asarray(draw(p, leaf), jnp.float32), shapes)


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _trees_equal(a, b):
  return all(jax.tree.leaves(jax.tree.map(lambda u, v: bool(jnp.array_equal(u, v)), a, b)))


def test_init():
  # rbg keys compile much faster than threefry on CPU; init itself is the same.
  model = create_model("resnet20_tiny", num_classes=NUM_CLASSES)
  variables = model.init(jax.random.key(0, impl="rbg"), _images())
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  stats = variables["batch_stats"]["layer1_0"]["bn1"]
  np.testing.assert_array_equal(stats["mean"], 0.0)
  np.testing.assert_array_equal(stats["var"], 1.0)
  # He initialisation (fan-out, as torchvision): std sqrt(2 / (3 * 3 * 32)).
  kernel = variables["params"]["layer3_0"]["conv2"]["kernel"]
  assert 0.8 < float(jnp.std(kernel)) / np.sqrt(2 / (9 * 32)) < 1.2


def test_every_model_has_a_tiny_variant():
  tiny = {name for name in MODELS if name.endswith("_tiny")}
  assert tiny == set(TINY)


@pytest.mark.parametrize("name", TINY)
def test_eval_logits_shape_dtype_and_determinism(name):
  model = create_model(name, num_classes=NUM_CLASSES)
  x = _images()
  variables = _init(model, x)
  assert set(variables) == {"params", "batch_stats"}
  logits = model.apply(variables, x)
  assert logits.shape == (2, NUM_CLASSES)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  np.testing.assert_array_equal(logits, model.apply(variables, x, train=False))
  # Eval mode reads but never writes the running statistics.
  _, state = model.apply(variables, x, mutable=["batch_stats"])
  assert _trees_equal(state["batch_stats"], variables["batch_stats"])


@pytest.mark.parametrize("name", TINY)
def test_batch_statistics_modes(name):
  model = create_model(name, num_classes=NUM_CLASSES)
  x = _images()
  variables = _init(model, x)
  eval_logits = model.apply(variables, x)

  train_logits, train_state = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                          rngs={"dropout": DROPOUT_KEY})
  assert not _trees_equal(train_state["batch_stats"], variables["batch_stats"])

  # Batch statistics without dropout: no dropout rng is needed, the result is
  # deterministic, differs from eval mode and updates the statistics like train.
  bs_logits, bs_state = model.apply(variables, x, train=False, use_batch_stats=True,
                                    mutable=["batch_stats"])
  again, _ = model.apply(variables, x, use_batch_stats=True, mutable=["batch_stats"])
  np.testing.assert_array_equal(bs_logits, again)
  assert not np.allclose(bs_logits, eval_logits, atol=1e-4)
  if name in WITH_DROPOUT:
    # Dropout changes what later layers see; before the first dropout the
    # statistics must agree.
    for key in ("mean", "var"):
      first = WITH_DROPOUT[name]
      np.testing.assert_allclose(bs_state["batch_stats"][first][key],
                                 train_state["batch_stats"][first][key], rtol=1e-6, atol=1e-6)
    assert not np.allclose(bs_logits, train_logits, atol=1e-4)
    # train=True with running statistics: dropout only.
    dropped = model.apply(variables, x, train=True, use_batch_stats=False,
                          rngs={"dropout": DROPOUT_KEY})
    assert not np.allclose(dropped, eval_logits, atol=1e-4)
  else:
    np.testing.assert_allclose(bs_logits, train_logits, rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree.leaves(bs_state), jax.tree.leaves(train_state)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_every_activation_is_used(name):
  x = _images()
  variables = _init(create_model(name, num_classes=NUM_CLASSES), x)
  outputs = {}
  # smooth_relu has parameters of its own and relu_softplus_grad is ReLU in
  # the forward pass by design (both covered in test_activations.py); CELU
  # with its default alpha 1 is ELU, so it is taken at alpha 2.
  for activation in sorted(set(activations.ACTIVATIONS) - {"smooth_relu", "relu_softplus_grad", "celu"}) + ["celu:2"]:
    model = create_model(name, num_classes=NUM_CLASSES, activation=activation)
    logits = model.apply(variables, x)
    assert logits.shape == (2, NUM_CLASSES) and bool(jnp.all(jnp.isfinite(logits)))
    outputs[activation] = np.asarray(logits)
  # Same weights, different activation -> different function: the name is
  # really injected, not ignored in favour of a hard-coded relu.
  names = sorted(outputs)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      assert not np.allclose(outputs[a], outputs[b], atol=1e-5), (a, b)


@pytest.mark.parametrize("norm", ["groupnorm", "none"])
@pytest.mark.parametrize("name", TINY)
def test_batch_independent_norms(name, norm):
  model = create_model(name, num_classes=NUM_CLASSES, norm=norm)
  x = _images()
  variables = _init(model, x)
  assert set(variables) == {"params"}
  n_bn = _count(_init(create_model(name, num_classes=NUM_CLASSES), x)["params"])
  # GroupNorm has BatchNorm's affine parameters; 'none' has none of them.
  assert (_count(variables["params"]) == n_bn) == (norm == "groupnorm")
  logits = model.apply(variables, x, use_batch_stats=True)
  assert logits.shape == (2, NUM_CLASSES) and logits.dtype == jnp.float32
  # Per-example normalisation: an example's logits ignore the rest of the batch.
  other = x.at[1].set(_images(seed=3)[1])
  np.testing.assert_allclose(model.apply(variables, other, use_batch_stats=True)[0], logits[0],
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_bfloat16_compute_keeps_float32_params_and_logits(name):
  x = _images()
  model = create_model(name, num_classes=NUM_CLASSES, dtype="bfloat16")
  variables = _init(model, x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  logits = model.apply(variables, x)
  assert logits.dtype == jnp.float32
  reference = create_model(name, num_classes=NUM_CLASSES).apply(variables, x)
  # Measured (jaxlib 0.10.2, CPU): the largest error is 0.4-0.8% of the largest
  # logit, from bfloat16's 8-bit mantissa accumulated over the layers.
  error = float(jnp.max(jnp.abs(logits - reference)))
  assert error <= 0.02 * float(jnp.max(jnp.abs(reference))), error


def test_convnet_takes_mnist_and_cifar_shapes():
  for shape, flat in [((1, 28, 28, 1), 3 * 3 * 128), ((1, 32, 32, 3), 4 * 4 * 128)]:
    model = create_model("convnet", num_classes=10)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
    assert variables["params"]["fc1"]["kernel"].shape == (flat, 512)
    out = jax.eval_shape(model.apply, variables, jnp.zeros(shape))
    assert out.shape == (1, 10) and out.dtype == jnp.float32


# Published parameter counts (torchvision for the ImageNet ResNets; Zagoruyko &
# Komodakis for WRN-28-10; Rice et al.'s PreActResNet18 plus its final BN).
# ResNet-20 with 64-128-256 maps and 10 classes:
#   stem 3*3*3*64 + 2*64                                       =     1,856
#   stage 1: 3 blocks * (2 * 3*3*64*64 + 2 * 2*64)             =   221,952
#   stage 2: 3*3*64*128 + 64*128 (proj) + 3 BN(128)
#            + 5 * 3*3*128*128 + 4 BN(128) ... in full:         =   820,992
#   stage 3 (same pattern with 128 -> 256)                     = 3,280,384
#   dense 256*10 + 10                                          =     2,570
#                                                      total  = 4,327,754
PARAM_COUNTS = [
    ("resnet50", 1000, 224, 25_557_032),
    ("resnet101", 1000, 224, 44_549_160),
    ("resnet152", 1000, 224, 60_192_808),
    ("wide_resnet50_2", 1000, 224, 68_883_240),
    ("resnet20", 10, 32, 4_327_754),
    ("preact_resnet18", 10, 32, 11_172_170),
    ("wrn28_10", 10, 32, 36_479_194),
    ("wrn16_2", 10, 32, 691_674),
]


def _resnet20_count(widths=(64, 128, 256), blocks=3, classes=10):
  bn = lambda c: 2 * c  # noqa: E731
  total = 3 * 3 * 3 * widths[0] + bn(widths[0])
  cin = widths[0]
  for width in widths:
    for _ in range(blocks):
      total += 3 * 3 * cin * width + 3 * 3 * width * width + 2 * bn(width)
      if cin != width:
        total += cin * width + bn(width)
      cin = width
  return total + cin * classes + classes


@pytest.mark.parametrize("name,classes,size,expected", PARAM_COUNTS)
def test_full_size_parameter_counts(name, classes, size, expected):
  model = create_model(name, num_classes=classes)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert _count(variables["params"]) == expected
  out = jax.eval_shape(model.apply, variables, x)
  assert out.shape == (2, classes) and out.dtype == jnp.float32
  if name == "resnet20":
    assert _resnet20_count() == expected


def test_wrn32_10_is_madrys_network():
  model = create_model("wrn32_10", num_classes=10)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  params = variables["params"]
  assert params["conv1"]["kernel"].shape == (3, 3, 3, 16)
  assert {k for k in params if k.startswith("layer")} == {
      f"layer{s}_{b}" for s in (1, 2, 3) for b in range(5)}
  assert params["layer3_4"]["conv2"]["kernel"].shape == (3, 3, 640, 640)


@pytest.mark.parametrize("field,value,kind", [
    ("name", "resnet7", "model"),
    ("activation", "swishy", "activation"),
    ("norm", "layernormish", "normalisation"),
    ("dtype", "float16", "dtype"),
])
def test_unknown_names_raise_config_error(field, value, kind):
  kwargs = {"name": "resnet20_tiny", "num_classes": 10, field: value}
  with pytest.raises(ConfigError, match=f"unknown {kind} '{value}'"):
    create_model(**kwargs)


def test_unknown_activation_in_a_module_built_directly_raises():
  backbone = MODELS["resnet20_tiny"].backbone(activation="swishy")
  model = Network(backbone=backbone, head=ClassifierHead(num_classes=10))
  with pytest.raises(ConfigError, match="swishy"):
    jax.eval_shape(model.init, jax.random.key(0), _images())


def test_groupnorm_group_count_and_statistics():
  assert [norms.groupnorm_groups(c) for c in (64, 48, 8, 20, 7)] == [32, 24, 8, 20, 7]
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (2, 4, 4, 48))
  y, _ = norms.GroupNorm().init_with_output(jax.random.key(1), x)
  groups = np.asarray(y).reshape(2, 16, 24, 2)
  np.testing.assert_allclose(groups.mean(axis=(1, 3)), 0.0, atol=1e-5)
  np.testing.assert_allclose(groups.var(axis=(1, 3)), 1.0, atol=1e-3)


class _LearnableSoftplus(nn.Module):
  """softplus(beta x) / beta with a trained beta: a stand-in for later work."""

  @nn.compact
  def __call__(self, x):
    beta = self.param("beta", nn.initializers.ones, (), jnp.float32)
    return nn.softplus(beta * x) / beta


def test_learnable_activation_plugs_in_without_touching_models(monkeypatch):
  monkeypatch.setitem(activations.ACTIVATIONS, "learned_softplus", _LearnableSoftplus)
  model = create_model("resnet20_tiny", num_classes=NUM_CLASSES, activation="learned_softplus")
  x = _images()
  variables = _init(model, x)
  betas = [path for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"])
           if path[-1].key == "beta"]
  # One parameter per use site: stem, two per basic block, three blocks.
  assert len(betas) == 1 + 2 * 3
  grads = jax.jit(jax.grad(lambda p: model.apply({**variables, "params": p}, x).sum()))(
      variables["params"])
  assert any(float(jnp.abs(g)) > 0 for path, g in jax.tree_util.tree_leaves_with_path(grads)
             if path[-1].key == "beta")


def test_jit_with_batch_sharded_over_devices_matches_single_device():
  # No collective (axis_name) inside the model: under jit with a sharded batch
  # the compiler inserts the cross-device BatchNorm reductions itself.
  model = create_model("resnet20_tiny", num_classes=NUM_CLASSES)
  n = jax.device_count()
  x = _images((n, 8, 8, 3))
  variables = _init(model, x)
  step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
  mesh = jax.make_mesh((n,), ("data",))
  sharded_x = jax.device_put(x, jax.NamedSharding(mesh, jax.P("data")))
  logits, state = step(variables, sharded_x)
  ref_logits, ref_state = step(variables, x)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
