"""Auxiliary BatchNorm sets: one network, several sets of normalisation statistics.

AdvProp (Xie thesis, ch. 7, sec. 7.4.2, fig. 7.3) and the mixture-BN study of
ch. 6 (sec. 6.4.2, "MBN") keep one *main* BatchNorm set for clean images and
one *auxiliary* set per other source of training images (adversarial
examples; in fine-grained AdvProp, sec. 7.5.4, also AutoAugment-ed images).
All other layers are shared. Here a set is a name:

  'main'   the model as built, norm 'batchnorm[:momentum]': params `scale`,
           `bias`, statistics in 'batch_stats'.
  'adv'    the same model with norm 'aux_batchnorm:adv[,momentum]' (see
           `batchnorm.BatchNorm`): params `scale_adv`, `bias_adv` next to the
           main ones, statistics in the collection 'batch_stats_adv'.

`with_bn_set(model, 'adv')` returns that twin (the network with another norm
name, `Network.with_options`), so selecting a set is choosing which module applies the one shared
variable dict; every weight outside the norms has the same path in both. A
pass through set s reads only s's normalisation variables, and with batch
statistics it writes only `collection(s)`, the one collection to make mutable.

Variables with auxiliary sets are the plain model's variables plus the sets'
leaves (`add_aux_sets`); `export_main` drops them again and returns exactly
the variable tree of the model built with norm 'batchnorm' (at test time the
auxiliary BNs are dropped, sec. 7.4.3), whose predictions are those of the
main set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax

from advjax.errors import ConfigError
from advjax import registry
from advjax.models import norms

MAIN = norms.MAIN_BN_SET


def aux_norm(norm: str, bn_set: str) -> str:
  """The norm name of set `bn_set` for a model whose main norm is `norm`.

  Args:
    norm: the model's norm name, 'batchnorm' or 'batchnorm:<momentum>'.
    bn_set: 'main' or an auxiliary set name.

  Returns:
    `norm` itself for 'main', else 'aux_batchnorm:<bn_set>[,<momentum>]'
    (same momentum as the main set).

  Raises:
    ConfigError: auxiliary sets need a BatchNorm model.
  """
  if bn_set == MAIN:
    return norm
  base, args = registry.parse_name(norm)
  if base != "batchnorm":
    raise ConfigError(f"auxiliary BatchNorm set {bn_set!r} needs norm 'batchnorm', not {norm!r}")
  spec = f"aux_batchnorm:{','.join((bn_set, *args))}"
  norms.check_norm(spec)
  return spec


def with_bn_set(model: nn.Module, bn_set: str) -> nn.Module:
  """The model normalising with set `bn_set` ('main' returns `model` itself).

  Args:
    model: a registered classifier built with norm 'batchnorm[:momentum]'.
    bn_set: 'main' or an auxiliary set name.

  Returns:
    A Module whose variables are those of `model` plus set `bn_set`'s.
  """
  if bn_set == MAIN:
    return model
  return model.with_options(norm=aux_norm(model.norm, bn_set))


def collection(bn_set: str) -> str:
  """The collection a batch-statistics pass through `bn_set` updates (the one to make mutable)."""
  return "batch_stats" if bn_set == MAIN else norms.aux_collection(bn_set)


def _param_names(bn_set: str) -> tuple[str, str]:
  return f"scale_{bn_set}", f"bias_{bn_set}"


def _merge(a: Mapping, b: Mapping) -> dict:
  """Deep union of two nested dicts; `a` wins on leaves both hold."""
  out = dict(b)
  for k, v in a.items():
    out[k] = _merge(v, b[k]) if isinstance(v, Mapping) and isinstance(b.get(k), Mapping) else v
  return out


def _main_leaf(tree: Mapping, path, rename) -> jax.Array:
  """The leaf of `tree` at `path`, its last key renamed by `rename`."""
  node = tree
  for entry in path[:-1]:
    node = node[entry.key]
  return node[rename(path[-1].key)]


def add_aux_sets(model: nn.Module, variables: Mapping[str, Any], bn_sets: Sequence[str],
                 x: jax.Array) -> dict[str, Any]:
  """Adds auxiliary sets, copies of the main set, to the variables of the main model.

  Every auxiliary leaf starts as the corresponding main leaf (`scale_s` as
  `scale`, the running statistics as the main ones): applied to the freshly
  initialised main variables, each set starts where its initialisers would
  start it (including a zero-initialised scale), without compiling or
  drawing anything (only the twins' variable shapes are traced), and the
  shared weights of `variables` are kept.

  Args:
    model: the main model.
    variables: its variables ({'params': ..., 'batch_stats': ...}).
    bn_sets: auxiliary set names; 'main' is ignored.
    x: an input batch (or a ShapeDtypeStruct) of the model's image shape.

  Returns:
    `variables` plus, per set s, params `scale_s`/`bias_s` beside each main
    BatchNorm's and the collection `collection(s)`.
  """
  out = dict(variables)
  for bn_set in bn_sets:
    if bn_set == MAIN:
      continue
    twin = with_bn_set(model, bn_set)
    shapes = jax.eval_shape(lambda v: twin.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, v),
                            x)
    names = _param_names(bn_set)
    main_name = {f"scale_{bn_set}": "scale", f"bias_{bn_set}": "bias"}.__getitem__
    own = jax.tree_util.tree_map_with_path(lambda path, _: _main_leaf(variables["params"], path, main_name),
                                           _select(shapes["params"], names))
    out["params"] = _merge(out["params"], own)
    out[collection(bn_set)] = jax.tree_util.tree_map_with_path(
        lambda path, _: _main_leaf(variables["batch_stats"], path, lambda k: k), shapes[collection(bn_set)])
  return out


def _select(tree: Mapping, names: Sequence[str]) -> dict:
  """The sub-tree of `tree` holding only leaves named in `names` (empty branches pruned)."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      sub = _select(v, names)
      if sub:
        out[k] = sub
    elif k in names:
      out[k] = v
  return out


def _drop(tree: Mapping, names: Sequence[str]) -> dict:
  """`tree` without the leaves named in `names`."""
  return {k: _drop(v, names) if isinstance(v, Mapping) else v
          for k, v in tree.items() if isinstance(v, Mapping) or k not in names}


def aux_sets(variables: Mapping[str, Any]) -> tuple[str, ...]:
  """The names of the auxiliary sets present in `variables`, sorted."""
  prefix = norms.AUX_COLLECTION_PREFIX
  return tuple(sorted(k[len(prefix):] for k in variables if k.startswith(prefix)))


def export_main(variables: Mapping[str, Any]) -> dict[str, Any]:
  """The variables of the plain model: every auxiliary set dropped.

  Args:
    variables: variables of a model with auxiliary sets (`add_aux_sets`).

  Returns:
    Exactly the variable tree of the same model built with norm
    'batchnorm': its predictions are those of the main set.
  """
  sets = aux_sets(variables)
  names = [n for s in sets for n in _param_names(s)]
  out = {k: v for k, v in variables.items() if k not in {collection(s) for s in sets}}
  out["params"] = _drop(variables["params"], names)
  return out


def aux_collections(variables: Mapping[str, Any]) -> dict[str, Any]:
  """Only the auxiliary statistics collections of `variables`, keyed by collection name."""
  return {collection(s): variables[collection(s)] for s in aux_sets(variables)}
