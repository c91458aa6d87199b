"""Weight transfer between PyTorch state dicts and advjax Flax variables.

The Flax models name their submodules after the PyTorch reference modules in
`benchmarks/torch_models.py` (whose names follow torchvision, Rice et al.'s
PreActResNet and the TRADES/RobustBench WideResNet), so a transfer is a
renaming of module paths plus a re-layout of each array:

  =====================  =========================  ===========================
  layer                  PyTorch                    Flax
  =====================  =========================  ===========================
  Conv2d                 weight [O, I, H, W]        params kernel [H, W, I, O]
                         bias [O]                   params bias [O]
  Linear                 weight [out, in]           params kernel [in, out]
  BatchNorm2d            weight, bias [C]           params scale, bias [C]
                         running_mean/var [C]       batch_stats mean/var [C]
  =====================  =========================  ===========================

One layer needs more than a transpose: the convnet's first dense layer reads
the flattened conv features, which PyTorch flattens in (C, H, W) order and
Flax (NHWC) in (H, W, C) order, so its input rows are permuted as well
(square feature maps assumed, as the convnet always produces).

PyTorch's BatchNorm also keeps `num_batches_tracked`, a step counter used only
when momentum is None; Flax has no counterpart, so `torch_to_flax` drops it and
`flax_to_torch` writes 0, which lets `load_state_dict(strict=True)` succeed.
Weights transfer exactly, and so do logits in both eval and batch-statistics
mode, but training updates of the running variance differ slightly: PyTorch
folds in the unbiased batch variance (times n / (n - 1), n = batch * H * W),
Flax the biased one.

Supported registry names (`SUPPORTED`): convnet, convnet_tiny, resnet20,
resnet20_tiny, preact_resnet18, preact_resnet18_tiny, wrn28_10, wrn32_10,
wrn16_2, wrn_tiny, resnet50, resnet101, resnet152, wide_resnet50_2,
resnet50_tiny, resnet50_dilated, resnet101_dilated, resnet50_dilated_tiny
(with the classifier head); each built with `norm='batchnorm'` and a
parameter-free activation (all activations registered so far).

Segmentation models are a backbone plus a head, so their bridge names are
torchvision's model names instead (`SEGMENTATION`): 'fcn_resnet50',
'fcn_resnet101' and 'fcn_resnet50_tiny' are `create_model(
'resnet50_dilated' (or 'resnet101_dilated', 'resnet50_dilated_tiny'),
head='fcn' or 'fcn_aux')`. Their state dicts nest the ResNet under
`backbone.` (torchvision's names, no fc) and the FCN head's
Sequential(conv, bn, relu, dropout, conv) under `classifier.` (indices 0, 1
and 4: fcn_conv, fcn_bn, fcn_score) and, with 'fcn_aux', `aux_classifier.`
(fcn_aux_conv, fcn_aux_bn, fcn_aux_score); whether the auxiliary classifier
is converted follows the template. The module needs only numpy:
torch tensors are accepted through `np.asarray(t.detach().cpu())`, and torch is
never imported.

Typical use:

    torch_model = benchmarks.torch_models.create_torch_model("resnet20_tiny")
    model = advjax.models.create_model("resnet20_tiny", num_classes=10)
    template = jax.eval_shape(model.init, key, x)
    variables = torch_to_flax(torch_model.state_dict(), "resnet20_tiny", template)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from advjax.errors import CheckpointError, unknown_name

_NUM_BATCHES = "num_batches_tracked"


def _rename_resnet(path: tuple[str, ...]) -> list[str]:
  names = []
  for p in path:
    if m := re.fullmatch(r"layer(\d+)_(\d+)", p):
      names.append(f"layer{m[1]}.{m[2]}")
    else:
      names.append({"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(p, p))
  return names


def _rename_preact(path: tuple[str, ...]) -> list[str]:
  names = []
  for p in path:
    if m := re.fullmatch(r"layer(\d+)_(\d+)", p):
      names.append(f"layer{m[1]}.{m[2]}")
    else:
      names.append({"shortcut": "shortcut.0", "fc": "linear"}.get(p, p))
  return names


def _rename_wrn(path: tuple[str, ...]) -> list[str]:
  if path == ("bn",):
    return ["bn1"]
  names = []
  for p in path:
    if m := re.fullmatch(r"layer(\d+)_(\d+)", p):
      names.append(f"block{m[1]}.layer.{m[2]}")
    else:
      names.append({"shortcut": "convShortcut"}.get(p, p))
  return names


def _rename_convnet(path: tuple[str, ...]) -> list[str]:
  return list(path)


# torchvision's FCNHead is Sequential(conv, bn, relu, dropout, conv).
_FCN_HEAD = {
    "fcn_conv": "classifier.0", "fcn_bn": "classifier.1", "fcn_score": "classifier.4",
    "fcn_aux_conv": "aux_classifier.0", "fcn_aux_bn": "aux_classifier.1", "fcn_aux_score": "aux_classifier.4",
}


def _rename_fcn(path: tuple[str, ...]) -> list[str]:
  if path[0] in _FCN_HEAD:
    return [_FCN_HEAD[path[0]], *path[1:]]
  return ["backbone", *_rename_resnet(path)]


_FAMILIES: dict[str, Callable[[tuple[str, ...]], list[str]]] = {
    "convnet": _rename_convnet,
    "resnet": _rename_resnet,
    "preact": _rename_preact,
    "wrn": _rename_wrn,
    "fcn": _rename_fcn,
}

SUPPORTED: dict[str, str] = {
    "convnet": "convnet",
    "convnet_tiny": "convnet",
    "resnet20": "resnet",
    "resnet20_tiny": "resnet",
    "resnet50": "resnet",
    "resnet101": "resnet",
    "resnet152": "resnet",
    "wide_resnet50_2": "resnet",
    "resnet50_tiny": "resnet",
    "resnet50_dilated": "resnet",
    "resnet101_dilated": "resnet",
    "resnet50_dilated_tiny": "resnet",
    "preact_resnet18": "preact",
    "preact_resnet18_tiny": "preact",
    "wrn28_10": "wrn",
    "wrn32_10": "wrn",
    "wrn16_2": "wrn",
    "wrn_tiny": "wrn",
}

# torchvision segmentation name -> (advjax backbone, heads it may carry).
SEGMENTATION: dict[str, tuple[str, tuple[str, ...]]] = {
    "fcn_resnet50": ("resnet50_dilated", ("fcn", "fcn_aux")),
    "fcn_resnet101": ("resnet101_dilated", ("fcn", "fcn_aux")),
    "fcn_resnet50_tiny": ("resnet50_dilated_tiny", ("fcn", "fcn_aux")),
}
SUPPORTED.update({name: "fcn" for name in SEGMENTATION})

# (Flax collection, Flax leaf name, is-norm-layer) -> PyTorch leaf name.
_LEAF_NAMES = {
    ("params", "kernel", False): "weight",
    ("params", "bias", False): "bias",
    ("params", "scale", True): "weight",
    ("params", "bias", True): "bias",
    ("batch_stats", "mean", True): "running_mean",
    ("batch_stats", "var", True): "running_var",
}


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
  for key, value in tree.items():
    if isinstance(value, Mapping):
      yield from _flatten(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _family(model_name: str) -> Callable[[tuple[str, ...]], list[str]]:
  if model_name not in SUPPORTED:
    raise unknown_name("bridge model", model_name, SUPPORTED)
  return _FAMILIES[SUPPORTED[model_name]]


def _norm_modules(variables: Mapping[str, Any]) -> set[tuple[str, ...]]:
  """Module paths holding a 'scale' parameter, i.e. normalisation layers."""
  return {path[:-1] for path, _ in _flatten(variables.get("params", {}))
          if path[-1] == "scale"}


def _torch_key(rename, collection: str, path: tuple[str, ...], is_norm: bool) -> str:
  leaf = _LEAF_NAMES.get((collection, path[-1], is_norm))
  if leaf is None:
    raise CheckpointError(f"no PyTorch counterpart for {collection}/{'/'.join(path)}")
  return ".".join(rename(path[:-1]) + [leaf])


def _convnet_feature_shape(variables: Mapping[str, Any], in_features: int) -> tuple[int, int]:
  """(side, channels) of the convnet's last feature map, from its weights."""
  convs = [k for k in variables["params"] if re.fullmatch(r"conv\d+", k)]
  last = max(convs, key=lambda k: int(k[4:]))
  channels = _shape(variables["params"][last]["kernel"])[-1]
  side = math.isqrt(in_features // channels)
  if side * side * channels != in_features:
    raise CheckpointError(
        f"convnet fc1 input {in_features} is not a square map of {channels} channels")
  return side, channels


def _shape(value) -> tuple[int, ...]:
  """Shape of an array or of a `jax.ShapeDtypeStruct`, without reading data."""
  return tuple(value.shape) if hasattr(value, "shape") else np.shape(value)


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):
    value = value.detach().cpu()
  return np.asarray(value)


def torch_to_flax(state_dict: Mapping[str, Any], model_name: str,
                  variables_template: Mapping[str, Any]) -> dict[str, Any]:
  """Converts a PyTorch state dict into Flax variables.

  Args:
    state_dict: PyTorch state dict (tensors or arrays) of the reference module
      in `benchmarks/torch_models.py` for `model_name`.
    model_name: an `advjax.models.MODELS` name in `SUPPORTED`, or a
      segmentation name of `SEGMENTATION` ('fcn_resnet50', ...).
    variables_template: the Flax variables of the same model, or their
      shapes (`jax.eval_shape(model.init, ...)`); only structure and shapes
      are read.

  Returns:
    {'params': ..., 'batch_stats': ...} nested dicts of float32 numpy arrays
    with the template's structure.

  Raises:
    ConfigError: if `model_name` is not in `SUPPORTED`.
    CheckpointError: for a missing or unused state-dict entry, or a shape
      mismatch.
  """
  rename = _family(model_name)
  norms = _norm_modules(variables_template)
  remaining = {k: v for k, v in state_dict.items() if not k.endswith(_NUM_BATCHES)}
  out: dict[str, Any] = {}
  for collection in variables_template:
    for path, leaf in _flatten(variables_template[collection]):
      key = _torch_key(rename, collection, path, path[:-1] in norms)
      if key not in remaining:
        raise CheckpointError(f"state dict has no {key!r} (for {collection}/{'/'.join(path)})")
      value = _to_numpy(remaining.pop(key)).astype(np.float32)
      shape = _shape(leaf)
      if path[-1] == "kernel" and value.ndim == 4:
        value = value.transpose(2, 3, 1, 0)
      elif path[-1] == "kernel" and value.ndim == 2:
        if SUPPORTED[model_name] == "convnet" and path[:-1] == ("fc1",):
          side, channels = _convnet_feature_shape(variables_template, shape[0])
          value = value.reshape(-1, channels, side, side).transpose(0, 2, 3, 1)
          value = value.reshape(value.shape[0], -1)
        value = value.T
      if value.shape != shape:
        raise CheckpointError(f"{key!r} has shape {value.shape} after conversion, "
                         f"expected {shape} for {collection}/{'/'.join(path)}")
      _set(out, (collection,) + path, np.ascontiguousarray(value))
  if remaining:
    raise CheckpointError(f"state dict entries with no Flax counterpart: {sorted(remaining)}")
  return out


def flax_to_torch(variables: Mapping[str, Any], model_name: str) -> dict[str, np.ndarray]:
  """Converts Flax variables into a PyTorch state dict of numpy arrays.

  Args:
    variables: {'params': ..., 'batch_stats': ...} of a model in `SUPPORTED`.
    model_name: its `advjax.models.MODELS` name, or its `SEGMENTATION` name.

  Returns:
    Mapping from state-dict key to float32 numpy array (int64 zeros for
    BatchNorm's `num_batches_tracked`); load it with
    `module.load_state_dict({k: torch.from_numpy(v) for k, v in d.items()})`.

  Raises:
    ConfigError: if `model_name` is not in `SUPPORTED`.
    CheckpointError: for a variable with no PyTorch counterpart.
  """
  rename = _family(model_name)
  norms = _norm_modules(variables)
  out: dict[str, np.ndarray] = {}
  for collection in variables:
    for path, leaf in _flatten(variables[collection]):
      is_norm = path[:-1] in norms
      key = _torch_key(rename, collection, path, is_norm)
      value = np.asarray(leaf, dtype=np.float32)
      if path[-1] == "kernel" and value.ndim == 4:
        value = value.transpose(3, 2, 0, 1)
      elif path[-1] == "kernel" and value.ndim == 2:
        value = value.T
        if SUPPORTED[model_name] == "convnet" and path[:-1] == ("fc1",):
          side, channels = _convnet_feature_shape(variables, value.shape[1])
          value = value.reshape(-1, side, side, channels).transpose(0, 3, 1, 2)
          value = value.reshape(value.shape[0], -1)
      out[key] = np.ascontiguousarray(value)
      if is_norm and collection == "batch_stats" and path[-1] == "mean":
        out[".".join(rename(path[:-1]) + [_NUM_BATCHES])] = np.zeros((), np.int64)
  return out
