"""Segmentation models: the FCN heads, the dilated ResNets and VGG-16.

The pieces are checked against independent references: PyTorch's
F.interpolate and conv_transpose2d for the bilinear upsampling and the
transposed convolution, NumPy for the bilinear initialisation, the alignment
of skips and the FCN-8s skip arithmetic, and torchvision's published
parameter counts (computed here with jax.eval_shape, no memory). Logits
against a PyTorch FCN-ResNet on shared weights are in tests/test_bridge.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advjax import parallel
from advjax.errors import ConfigError
from advjax.models import MODELS, Features, create_model, fcn

KEY = jax.random.key(0)


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _shapes(model, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(model.init, KEY, x)
  return variables, jax.eval_shape(model.apply, variables, x)


def _random_variables(model, x, seed=1):
  """Random variables with the model's structure (score layers are zero at init, so drawn here)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]) / 2)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, size=leaf.shape)
    return 0.1 * rng.normal(size=leaf.shape)

  shapes = jax.eval_shape(model.init, KEY, x)
  return jax.tree_util.tree_map_with_path(lambda p, leaf: jnp.asarray(draw(p, leaf), jnp.float32), shapes)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _nhwc(t):
  return t.numpy().transpose(0, 2, 3, 1)


# ------------------------------------------------------------------ shapes


# (backbone, head, sides): even and odd sides; the convnet pools with floor
# (29 -> 14 -> 7 -> 3: the upsampled 6 is edge-padded to 7), VGG with ceil
# (20 -> 10 -> 5 -> 3 -> 2 -> 1: the upsampled 4 is cropped to 3).
SHAPE_CASES = [
    ("convnet_tiny", "fcn8s", (64, 28, 29)),
    ("convnet_tiny", "fcn", (64, 29)),
    ("vgg16_tiny", "fcn8s", (32, 20, 21)),
    ("vgg16_tiny", "fcn8s_fc", (20,)),
    ("resnet50_dilated_tiny", "fcn", (32, 33)),
    ("resnet50_dilated_tiny", "fcn_aux", (17,)),
    ("resnet50_tiny", "fcn8s", (64, 63)),
]


@pytest.mark.parametrize("name,head,sides", SHAPE_CASES)
def test_output_shapes_even_and_odd(name, head, sides):
  model = create_model(name, head=head, num_classes=7)
  for side in sides:
    _, out = _shapes(model, (2, side, side + 1, 3))
    assert out.shape == (2, side, side + 1, 7) and out.dtype == jnp.float32, (side, out.shape)


def test_tiny_fcn8s_runs_and_full_convnet_fits_64x64():
  model = create_model("convnet_tiny", head="fcn8s", num_classes=11)
  x = jax.random.uniform(jax.random.key(1), (2, 64, 64, 1))
  variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)
  assert set(variables) == {"params", "batch_stats"}
  apply = jax.jit(model.apply)
  # Long et al.'s zero-initialised scores: the network starts at zero logits.
  np.testing.assert_array_equal(apply(variables, x), 0.0)
  variables = _random_variables(model, x)
  logits = apply(variables, x)
  assert logits.shape == (2, 64, 64, 11) and bool(jnp.all(jnp.isfinite(logits)))
  assert float(jnp.std(logits)) > 0
  _, out = _shapes(create_model("convnet", head="fcn8s", num_classes=11), (2, 64, 64, 1))
  assert out.shape == (2, 64, 64, 11)


# --------------------------------------------------------- upsampling pieces


def test_resize_bilinear_equals_torch_interpolate():
  x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
  for size in [(40, 56), (11, 13), (16, 9), (5, 7), (3, 4)]:
    expected = _nhwc(F.interpolate(_nchw(x), size=size, mode="bilinear", align_corners=False))
    np.testing.assert_allclose(fcn.resize_bilinear(jnp.asarray(x), size), expected, rtol=0, atol=2e-6,
                               err_msg=str(size))


def test_bilinear_filter_taps():
  np.testing.assert_allclose(fcn.bilinear_filter(2), [0.25, 0.75, 0.75, 0.25])
  np.testing.assert_allclose(fcn.bilinear_filter(3), [1 / 3, 2 / 3, 1, 2 / 3, 1 / 3], rtol=1e-6)
  np.testing.assert_allclose(fcn.bilinear_filter(4), [1, 3, 5, 7, 7, 5, 3, 1] / np.float32(8))


def _upsample(x, features, kernel=None):
  module = fcn.Upsample2x(features)
  variables = module.init(KEY, x)
  if kernel is not None:
    variables = {"params": {"kernel": kernel}}
  return np.asarray(module.apply(variables, x)), variables["params"]["kernel"]


def test_upsample2x_initialisation_upsamples_a_ramp_exactly():
  h, w = 5, 6
  slopes = np.array([[1.0, -2.0, 0.5], [3.0, 0.25, -1.0]], np.float32)  # per channel: d/di, d/dj
  i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  x = (slopes[0] * i[..., None] + slopes[1] * j[..., None] + np.array([0.0, 1.0, -2.0]))[None]
  y, kernel = _upsample(jnp.asarray(x, jnp.float32), 3)
  # Bilinear upsampling by 2 (align_corners=False) samples the ramp at
  # u = (q + 1/2) / 2 - 1/2, clamped to the image: exact for a linear function.
  u = np.clip((np.arange(2 * h) + 0.5) / 2 - 0.5, 0, h - 1)
  v = np.clip((np.arange(2 * w) + 0.5) / 2 - 0.5, 0, w - 1)
  ui, vj = np.meshgrid(u, v, indexing="ij")
  expected = slopes[0] * ui[..., None] + slopes[1] * vj[..., None] + np.array([0.0, 1.0, -2.0])
  np.testing.assert_allclose(y[0], expected, rtol=0, atol=1e-5)
  # Channel c maps to channel c only.
  assert np.count_nonzero(np.asarray(kernel)) == 3 * 16
  # On any input the initial upsampling is bilinear resizing, borders included.
  z = jax.random.normal(jax.random.key(3), (2, 3, 4, 3))
  np.testing.assert_allclose(_upsample(z, 3)[0], fcn.resize_bilinear(z, (6, 8)), rtol=0, atol=1e-5)


def test_upsample2x_is_a_torch_transposed_convolution_of_the_edge_padded_input():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 3, 5, 2)).astype(np.float32)
  kernel = rng.normal(size=(4, 4, 2, 3)).astype(np.float32)  # no symmetry, so orientation matters
  y, _ = _upsample(jnp.asarray(x), 3, jnp.asarray(kernel))
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  # PyTorch's ConvTranspose2d weight is [in, out, kh, kw].
  expected = F.conv_transpose2d(_nchw(padded), torch.from_numpy(kernel.transpose(2, 3, 0, 1).copy()),
                                stride=2, padding=3)
  np.testing.assert_allclose(y, _nhwc(expected), rtol=1e-5, atol=1e-5)


def test_match_size_crops_or_repeats_the_last_row_and_column():
  x = np.random.default_rng(5).normal(size=(1, 4, 6, 2)).astype(np.float32)
  out = np.asarray(fcn.match_size(jnp.asarray(x), (5, 5)))
  expected = np.concatenate([x, x[:, -1:]], axis=1)[:, :, :5]
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_array_equal(fcn.match_size(jnp.asarray(x), (4, 6)), x)
  with pytest.raises(ConfigError, match="halve"):
    fcn.match_size(jnp.asarray(x), (8, 6))


def test_fcn8s_head_against_a_numpy_and_torch_reference():
  rng = np.random.default_rng(6)
  classes = 3
  # Heights 7, 3, 2 (floor pooling 7 -> 3: pad; ceil 3 -> 2: crop), widths 9, 4, 2
  # (pad, then equal), image 26 x 27.
  stages = tuple(jnp.asarray(rng.normal(size=(2, h, w, c)), jnp.float32)
                 for h, w, c in [(7, 9, 4), (3, 4, 5), (2, 2, 6)])
  head = fcn.FCN8sHead(num_classes=classes)
  args = dict(train=False, use_batch_stats=False, image_shape=(26, 27))
  variables = head.init(KEY, Features(stages, None), **args)
  params = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), variables["params"])
  out = np.asarray(head.apply({"params": params}, Features(stages, None), **args))

  def score(name, s):
    return np.asarray(s) @ params[name]["kernel"][0, 0] + params[name]["bias"]

  def up2(name, f, size):
    padded = np.pad(f, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    weight = torch.from_numpy(np.ascontiguousarray(params[name]["kernel"].transpose(2, 3, 0, 1)))
    up = _nhwc(F.conv_transpose2d(_nchw(padded), weight, stride=2, padding=3))
    rows = np.minimum(np.arange(size[0]), up.shape[1] - 1)
    cols = np.minimum(np.arange(size[1]), up.shape[2] - 1)
    return up[:, rows][:, :, cols]

  s3, s4, s5 = (np.asarray(s) for s in stages)
  f = score("fcn8s_score_fr", s5)
  f = up2("fcn8s_upscore2", f, s4.shape[1:3]) + score("fcn8s_score_pool4", s4)
  f = up2("fcn8s_upscore_pool4", f, s3.shape[1:3]) + score("fcn8s_score_pool3", s3)
  expected = _nhwc(F.interpolate(_nchw(f), size=(26, 27), mode="bilinear", align_corners=False))
  assert out.shape == (2, 26, 27, classes)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_fcn8s_rejects_backbones_whose_stages_do_not_halve():
  # The dilated ResNet keeps its last three stages at one size.
  model = create_model("resnet50_dilated_tiny", head="fcn8s", num_classes=3)
  with pytest.raises(ConfigError, match="halve"):
    _shapes(model, (1, 32, 32, 3))


# ---------------------------------------------------------------- backbones


def _stage_shapes(name, side):
  backbone = MODELS[name].backbone()
  x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
  mode = dict(train=False, use_batch_stats=False, pool=False)
  variables = jax.eval_shape(functools.partial(backbone.init, **mode), KEY, x)
  features = jax.eval_shape(functools.partial(backbone.apply, **mode), variables, x)
  return [s.shape[1:3] for s in features.stages], variables


@pytest.mark.parametrize("plain,dilated", [("resnet50", "resnet50_dilated"),
                                           ("resnet101", "resnet101_dilated"),
                                           ("resnet50_tiny", "resnet50_dilated_tiny")])
def test_dilated_resnet_has_output_stride_8_and_the_same_variables(plain, dilated):
  plain_sizes, plain_vars = _stage_shapes(plain, 64)
  dilated_sizes, dilated_vars = _stage_shapes(dilated, 64)
  assert plain_sizes == [(16, 16), (8, 8), (4, 4), (2, 2)]
  assert dilated_sizes == [(16, 16), (8, 8), (8, 8), (8, 8)]
  assert jax.tree.structure(plain_vars) == jax.tree.structure(dilated_vars)
  assert jax.tree.leaves(jax.tree.map(lambda a: a.shape, plain_vars)) == \
      jax.tree.leaves(jax.tree.map(lambda a: a.shape, dilated_vars))


def test_classifier_backbone_loads_into_the_fcn_model():
  """Everything but the classifier's fc is exactly the FCN's backbone (Experiment.init_backbone)."""
  x = (1, 64, 64, 3)
  classifier, _ = _shapes(create_model("resnet50", num_classes=1000), x)
  segmenter = create_model("resnet50_dilated", head="fcn_aux", num_classes=21)
  seg_vars, _ = _shapes(segmenter, x)
  for collection in ("params", "batch_stats"):
    backbone = {k: v for k, v in seg_vars[collection].items() if not segmenter.head_owns(k)}
    expected = {k: v for k, v in classifier[collection].items() if k != "fc"}
    assert jax.tree.map(lambda a: a.shape, backbone) == jax.tree.map(lambda a: a.shape, expected)


def test_dilation_needs_bottleneck_blocks():
  model = create_model("resnet20_tiny", num_classes=3, dilate_last=1)
  with pytest.raises(ConfigError, match="bottleneck"):
    _shapes(model, (1, 8, 8, 3))


def test_vgg16_layout_and_classifier():
  sizes, variables = _stage_shapes("vgg16", 224)
  assert sizes == [(112, 112), (56, 56), (28, 28), (14, 14), (7, 7)]
  convs = sorted(k for k in variables["params"] if k.startswith("conv"))
  assert convs == sorted(f"conv{s}_{i}" for s, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1))
  assert variables["params"]["conv4_1"]["kernel"].shape == (3, 3, 256, 512)
  # VGG-16's 13 convolutions: 14,714,688 parameters (norm='none' is the paper's network).
  model = create_model("vgg16", num_classes=10, norm="none")
  params, out = _shapes(model, (2, 32, 32, 3))
  assert _count(params["params"]) == 14_714_688 + 512 * 10 + 10
  assert out.shape == (2, 10)
  # Ceil-mode pooling: odd maps keep their last row, and tiny inputs never vanish.
  assert _stage_shapes("vgg16_tiny", 21)[0] == [(11, 11), (6, 6), (3, 3), (2, 2), (1, 1)]


# ------------------------------------------------------ parameter counts


def _fcn_head_count(cin, classes):
  inner = cin // 4
  return 9 * cin * inner + 2 * inner + inner * classes + classes


# torchvision's fcn_resnet50 / fcn_resnet101 (21 classes, aux_classifier):
# trainable parameters only (BatchNorm buffers excluded) of the ResNet minus
# its fc (25,557,032 - 2,049,000 = 23,508,032 for ResNet-50; 42,500,160 for
# ResNet-101), the FCN head on 2048 channels (9,448,981) and the auxiliary
# one on 1024 (2,365,205).
@pytest.mark.parametrize("backbone,head,expected", [
    ("resnet50_dilated", "fcn_aux", 35_322_218),
    ("resnet101_dilated", "fcn_aux", 54_314_346),
    ("resnet50_dilated", "fcn", 35_322_218 - 2_365_205),
])
def test_fcn_resnet_parameter_counts_match_torchvision(backbone, head, expected):
  resnet = {"resnet50_dilated": 25_557_032, "resnet101_dilated": 44_549_160}[backbone] - (2048 * 1000 + 1000)
  hand = resnet + _fcn_head_count(2048, 21) + (_fcn_head_count(1024, 21) if head == "fcn_aux" else 0)
  assert hand == expected
  params, out = _shapes(create_model(backbone, head=head, num_classes=21), (1, 64, 64, 3))
  assert _count(params["params"]) == expected
  assert out.shape == (1, 64, 64, 21)


def test_vgg16_fcn8s_parameter_count():
  classes = 21
  hand = (14_714_688                                  # 13 convolutions
          + 7 * 7 * 512 * 4096 + 4096                 # fc6
          + 4096 * 4096 + 4096                        # fc7
          + (4096 + 512 + 256) * classes + 3 * classes  # score_fr, score_pool4, score_pool3
          + 2 * 4 * 4 * classes * classes)            # upscore2, upscore_pool4 (no bias)
  params, out = _shapes(create_model("vgg16", head="fcn8s_fc", num_classes=classes, norm="none"),
                        (1, 224, 224, 3))
  assert _count(params["params"]) == hand == 134_376_863
  assert out.shape == (1, 224, 224, classes)


# ------------------------------------------------------ variables and devices


@pytest.mark.parametrize("name,head", [("convnet_tiny", "fcn8s"), ("vgg16_tiny", "fcn8s_fc"),
                                       ("resnet50_dilated_tiny", "fcn_aux")])
def test_head_owns_exactly_the_head_variables(name, head):
  model = create_model(name, head=head, num_classes=4, activation="smooth_relu")
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(model.init, KEY, x)
  backbone = jax.eval_shape(functools.partial(model.backbone.init, train=False, use_batch_stats=False, pool=False),
                            KEY, x)
  assert set(backbone) <= set(variables)
  for collection, tree in variables.items():
    head_keys = set(tree) - set(backbone.get(collection, {}))
    assert {k for k in tree if model.head_owns(k)} == head_keys, collection
  assert any(model.head_owns(k) for k in variables["params"])
  if head != "fcn8s":
    # A learnable activation's parameters in the head carry the head's prefix too.
    assert any("act" in k and model.head_owns(k) for k in variables["params"])


def test_aux_batchnorm_reaches_the_fcn_head():
  model = create_model("resnet50_dilated_tiny", head="fcn_aux", num_classes=4, norm="aux_batchnorm:adv")
  variables = jax.eval_shape(model.init, KEY, jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  assert set(variables["params"]["fcn_bn"]) == {"scale_adv", "bias_adv"}
  assert set(variables["batch_stats_adv"]["fcn_aux_bn"]) == {"mean", "var"}


def test_fcn8s_forward_backward_sharded_over_8_devices_equals_1_device():
  model = create_model("convnet_tiny", head="fcn8s", num_classes=11)
  n = jax.device_count()
  assert n == 8
  x = jax.random.uniform(jax.random.key(1), (n, 64, 64, 1))
  labels = jax.random.randint(jax.random.key(2), (n, 64, 64), 0, 11)
  variables = _random_variables(model, x)

  def loss(params, state, x):
    logits, updates = model.apply({"params": params, **state}, x, use_batch_stats=True, mutable=["batch_stats"])
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1).mean()
    return ce, (logits, updates)

  step = jax.jit(jax.value_and_grad(loss, has_aux=True))
  state = {"batch_stats": variables["batch_stats"]}
  # The library's mesh and batch sharding, as the trainer uses them.
  sharded = jax.device_put(x, parallel.batch_sharded(parallel.make_mesh()))
  (value, (logits, updates)), grads = step(variables["params"], state, sharded)
  (ref_value, (ref_logits, ref_updates)), ref_grads = step(variables["params"], state, x)
  assert logits.sharding.spec[0] == parallel.DATA_AXIS
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves((grads, updates)), jax.tree.leaves((ref_grads, ref_updates))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))


def test_convnet_dense_reads_each_stage_before_its_pool():
  """Same variables as the convnet (minus fc1); pooling its stages gives the convnet's stages exactly."""
  x = jax.random.uniform(jax.random.key(3), (2, 16, 16, 1))
  plain = MODELS["convnet_tiny"].backbone()
  dense = MODELS["convnet_dense_tiny"].backbone()
  variables = plain.init(KEY, x, train=False, use_batch_stats=False)
  dense_shapes = jax.eval_shape(functools.partial(dense.init, train=False, use_batch_stats=False, pool=False),
                                KEY, x)
  expected = {k: v for k, v in variables["params"].items() if k != "fc1"}
  assert jax.tree.map(lambda a: a.shape, dense_shapes["params"]) == jax.tree.map(lambda a: a.shape, expected)
  apply = functools.partial(plain.apply, train=False, use_batch_stats=False, pool=False)
  pooled = apply(variables, x).stages
  unpooled = dense.apply(variables, x, train=False, use_batch_stats=False, pool=False).stages
  assert [s.shape[1:3] for s in unpooled] == [(16, 16), (8, 8), (4, 4)]
  for p, u in zip(pooled, unpooled):
    np.testing.assert_array_equal(p, nn_max_pool(u))


def nn_max_pool(x):
  """2x2 max pool, stride 2, in NumPy."""
  x = np.asarray(x)
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

