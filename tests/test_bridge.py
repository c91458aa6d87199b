"""Cross-checks the Flax models against the PyTorch references on shared weights.

A randomly initialised PyTorch module (with BatchNorm running statistics made
non-trivial by a few training-mode passes) is converted with
`advjax.bridge.torch_to_flax`; both frameworks must then produce the same
logits on the same [0, 1] images, and converting back must reproduce the
original state dict exactly. Agreement catches layout errors (kernel
transposes, the convnet's flatten order), wrong padding or strides, a
misplaced activation or shortcut, and BatchNorm momentum/epsilon mismatches.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from advjax import bridge
from advjax.errors import CheckpointError, ConfigError
from advjax.models import create_model
from benchmarks import torch_models

# (registry name, input size, channels, classes)
# Sizes are small but chosen to cover odd maps: the convnet pools 7 -> 3 (and
# its flatten permutation acts on a 3x3 map), the preact ResNet strides 3 -> 2.
CASES = [
    ("convnet_tiny", 28, 1, 10),
    ("resnet20_tiny", 8, 3, 5),
    ("preact_resnet18_tiny", 12, 3, 5),
    ("wrn_tiny", 8, 3, 5),
    ("resnet50_tiny", 16, 3, 7),
]
MEAN = (0.49, 0.48, 0.45)
STD = (0.25, 0.24, 0.26)


def _stats(channels):
  return (MEAN[:1], STD[:1]) if channels == 1 else (MEAN, STD)


def _torch_model(name, size, channels, classes):
  mean, std = _stats(channels)
  kwargs = dict(num_classes=classes, in_channels=channels, mean=mean, std=std)
  if name.startswith("convnet"):
    kwargs["image_size"] = size
  torch.manual_seed(0)
  model = torch_models.create_torch_model(name, **kwargs)
  # Training-mode passes move the running statistics away from (0, 1), so
  # eval-mode agreement really exercises the statistics transfer.
  model.train()
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for _ in range(3):
      model(torch.rand(4, channels, size, size, generator=gen))
  return model.eval()


def _flax_model(name, channels, classes):
  mean, std = _stats(channels)
  return create_model(name, num_classes=classes, mean=mean, std=std)


def _convert(name, size, channels, classes):
  torch_model = _torch_model(name, size, channels, classes)
  model = _flax_model(name, channels, classes)
  template = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, size, size, channels)))
  variables = bridge.torch_to_flax(torch_model.state_dict(), name, template)
  return torch_model, model, variables


def _images(size, channels, batch=2):
  return np.random.default_rng(2).uniform(size=(batch, size, size, channels)).astype(np.float32)


def _torch_logits(torch_model, x_nhwc):
  with torch.no_grad():
    return torch_model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2))).numpy()


@pytest.mark.parametrize("name,size,channels,classes", CASES)
def test_eval_logits_match_and_round_trip(name, size, channels, classes):
  torch_model, model, variables = _convert(name, size, channels, classes)
  x = _images(size, channels)
  expected = _torch_logits(torch_model, x)
  logits = model.apply(variables, jnp.asarray(x), train=False)
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4)

  back = bridge.flax_to_torch(variables, name)
  original = torch_model.state_dict()
  assert set(back) == set(original)
  for key, value in original.items():
    if key.endswith("num_batches_tracked"):
      continue  # A step counter with no Flax counterpart; written as 0.
    np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
  # The converted dict loads strictly into a fresh module.
  torch_models.create_torch_model(
      name, num_classes=classes, in_channels=channels,
      **({"image_size": size} if name.startswith("convnet") else {})
  ).load_state_dict({k: torch.from_numpy(v) for k, v in back.items()})


# Models whose last feature maps are at least 2x2: batch statistics over only
# two values (batch 2, 1x1 maps) amplify float32 rounding beyond the tolerance.
@pytest.mark.parametrize("name,size,channels,classes", [CASES[1], CASES[2]])
def test_batch_statistics_logits_and_updates_match(name, size, channels, classes):
  torch_model, model, variables = _convert(name, size, channels, classes)
  x = _images(size, channels)
  before = {k: v.clone() for k, v in torch_model.state_dict().items()}
  # Elements per channel that each BatchNorm normalises over (batch * H * W).
  counts = {}

  def count_hook(key):
    def hook(module, inputs, output):
      counts[key] = inputs[0].numel() // inputs[0].shape[1]
    return hook

  for module_name, module in torch_model.named_modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.register_forward_hook(count_hook(module_name))
  # These models have no dropout, so PyTorch's train mode differs from eval
  # mode only in using (and updating) batch statistics.
  torch_model.train()
  expected = _torch_logits(torch_model, x)
  logits, updates = model.apply(variables, jnp.asarray(x), train=True,
                                mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4)

  updated = bridge.flax_to_torch({"params": variables["params"], **updates}, name)
  after = torch_model.state_dict()
  for module_name, n in counts.items():
    key = f"{module_name}.running_mean"
    np.testing.assert_allclose(updated[key], after[key].numpy(), rtol=1e-5, atol=1e-5,
                               err_msg=key)
    # PyTorch folds the unbiased batch variance (Bessel, n / (n - 1)) into
    # its running variance, Flax the biased one; undo the correction.
    key = f"{module_name}.running_var"
    old = before[key].numpy()
    unbiased = (after[key].numpy() - 0.9 * old) / 0.1
    np.testing.assert_allclose(updated[key], 0.9 * old + 0.1 * unbiased * (n - 1) / n,
                               rtol=1e-5, atol=1e-5, err_msg=key)


def test_unsupported_model_is_rejected():
  with pytest.raises(ConfigError, match="resnet7"):
    bridge.flax_to_torch({"params": {}}, "resnet7")


def test_missing_state_dict_entry_is_reported():
  torch_model = _torch_model("resnet20_tiny", 8, 3, 10)
  model = _flax_model("resnet20_tiny", 3, 10)
  template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  state = dict(torch_model.state_dict())
  del state["layer2.0.downsample.1.running_var"]
  with pytest.raises(CheckpointError, match=r"layer2\.0\.downsample\.1\.running_var"):
    bridge.torch_to_flax(state, "resnet20_tiny", template)


# ----------------------------------------------------------- segmentation: FCN-ResNet

# torchvision's fcn_resnet layout at toy size: blocks (1, 1, 2, 2), so both
# dilated stages have a block at the previous and one at the new dilation
# (stage 3: 1, 2; stage 4: 2, 4), on a 33x33 image (odd: 33 -> 17 -> 9 -> 5,
# and a non-integer 5 -> 33 upsampling).
FCN_STAGES = (1, 1, 2, 2)
FCN_WIDTHS = (8, 16, 32, 64)
FCN_SIZE, FCN_CLASSES = 33, 5


def _fcn_pair(aux=True, warm_statistics=True):
  torch.manual_seed(0)
  torch_model = torch_models.FCN(stage_sizes=FCN_STAGES, widths=FCN_WIDTHS, num_classes=FCN_CLASSES,
                                 aux=aux, mean=MEAN, std=STD)
  if warm_statistics:
    torch_model.train()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
      for _ in range(3):
        torch_model(torch.rand(4, 3, FCN_SIZE, FCN_SIZE, generator=gen))
  torch_model.eval()
  model = create_model("resnet50_dilated_tiny", head="fcn_aux" if aux else "fcn", num_classes=FCN_CLASSES,
                       mean=MEAN, std=STD, stage_sizes=FCN_STAGES)
  template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, FCN_SIZE, FCN_SIZE, 3)))
  return torch_model, model, template


def _torch_fcn(torch_model, x_nhwc):
  with torch.no_grad():
    out = torch_model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2)))
  return {k: v.numpy().transpose(0, 2, 3, 1) for k, v in out.items()}


def test_fcn_resnet_eval_logits_match_torch_and_round_trip():
  torch_model, model, template = _fcn_pair()
  state = torch_model.state_dict()
  assert "backbone.layer4.1.conv2.weight" in state and "aux_classifier.4.bias" in state
  variables = bridge.torch_to_flax(state, "fcn_resnet50_tiny", template)
  x = _images(FCN_SIZE, 3)
  expected = _torch_fcn(torch_model, x)
  logits, sown = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(variables, jnp.asarray(x))
  assert logits.shape == (2, FCN_SIZE, FCN_SIZE, FCN_CLASSES)
  # Measured max |difference| (jaxlib 0.10.2, torch 2.13, CPU): 1.1e-7 (logits up to 0.17),
  # aux 4.5e-8.
  np.testing.assert_allclose(np.asarray(logits), expected["out"], rtol=1e-4, atol=1e-4)
  (aux,) = sown["intermediates"]["aux_logits"]
  np.testing.assert_allclose(np.asarray(aux), expected["aux"], rtol=1e-4, atol=1e-4)

  back = bridge.flax_to_torch(variables, "fcn_resnet50_tiny")
  assert set(back) == set(state)
  for key, value in state.items():
    if not key.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
  again = bridge.torch_to_flax(back, "fcn_resnet50_tiny", template)
  assert jax.tree.all(jax.tree.map(np.array_equal, again, variables))
  torch_models.FCN(stage_sizes=FCN_STAGES, widths=FCN_WIDTHS, num_classes=FCN_CLASSES).load_state_dict(
      {k: torch.from_numpy(v) for k, v in back.items()})


def test_fcn_resnet_batch_statistics_match_torch():
  torch_model, model, template = _fcn_pair(aux=False)
  variables = bridge.torch_to_flax(torch_model.state_dict(), "fcn_resnet50_tiny", template)
  before = {k: v.clone() for k, v in torch_model.state_dict().items()}
  # Training mode with batch statistics; the head's dropout is switched off on
  # both sides (train=False, use_batch_stats=True), so the outputs are deterministic.
  torch_model.train()
  for module in torch_model.modules():
    if isinstance(module, torch.nn.Dropout):
      module.eval()
  x = _images(FCN_SIZE, 3)
  expected = _torch_fcn(torch_model, x)["out"]
  logits, updates = jax.jit(lambda v, x: model.apply(v, x, use_batch_stats=True, mutable=["batch_stats"]))(
      variables, jnp.asarray(x))
  # Measured max |difference|: 9.2e-6 (logits up to 1.07; batch statistics over 2 x 5 x 5 values).
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4)
  updated = bridge.flax_to_torch({"params": variables["params"], **updates}, "fcn_resnet50_tiny")
  after = torch_model.state_dict()
  for key in ("backbone.layer4.1.bn2.running_mean", "classifier.1.running_mean"):
    assert not np.allclose(after[key].numpy(), before[key].numpy())
    np.testing.assert_allclose(updated[key], after[key].numpy(), rtol=1e-5, atol=1e-5, err_msg=key)


def test_fcn_template_decides_whether_the_aux_classifier_is_converted():
  torch_model, _, template = _fcn_pair(aux=True, warm_statistics=False)
  _, _, plain_template = _fcn_pair(aux=False, warm_statistics=False)
  with pytest.raises(CheckpointError, match="aux_classifier"):
    bridge.torch_to_flax(torch_model.state_dict(), "fcn_resnet50_tiny", plain_template)
  # A classification ResNet's keys (no 'backbone.' prefix) are not an FCN's.
  state = {k.removeprefix("backbone."): v for k, v in torch_model.state_dict().items()}
  with pytest.raises(CheckpointError, match=r"state dict has no 'backbone\."):
    bridge.torch_to_flax(state, "fcn_resnet50_tiny", template)
