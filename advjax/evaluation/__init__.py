"""Evaluation: a registry of evaluators run from `config.evals`, and the functions behind them.

  context     EvalContext: task, model builder, held-out data, training
              stream, named random keys, output directory
  base        the Evaluator protocol; clean metrics of a model
  search      the bisection behind eps_adv(delta) and eps_uni(delta)
  robustness  metrics under attack and eps_adv ('clean', 'pgd', 'eps_adv')
  universal_robustness
              metrics under universal perturbations and eps_uni ('universal', 'eps_uni')
  denoising   feature maps before and after a denoising block ('denoise_figure')
  perturbation_analyses  the universality paper's analyses over a run's
              epochs ('stability', 'sharedness', 'universal_epochs',
              'destruction', 'detection', 'transfer')
  segmentation  label maps only: DAG's ORIG / ADVR / PERM table ('dag') and a
              figure of attacked predictions ('seg_figure')
  synthesis   inpainting and generation with a segmentation model, their
              proxies and a figure ('synthesis')

`run(evals, ctx, variables)` runs the entries of a `config.evals` block and
returns `{entry name: {name: value}}`; eval.py, the end-of-training
evaluation and sweep.py all go through it. A new evaluator is one module with
an `Evaluator` subclass and a `register_evaluator` call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from advjax.errors import ConfigError
from advjax.evaluation import (base, context, denoising, perturbation_analyses, robustness, search, segmentation,
                               synthesis, universal_robustness)
from advjax.evaluation.base import EvalConfig, Evaluator, clean_metrics
from advjax.evaluation.context import EvalContext
from advjax.evaluation.robustness import attacked_metrics, eps_adv_config, eps_adv_search
from advjax.evaluation.universal_robustness import eps_uni_search, evaluate_universal
from advjax.registry import Registry

EVALUATORS: Registry = Registry("evaluator", {
    "clean": robustness.Clean,
    "pgd": robustness.PGD,
    "eps_adv": robustness.EpsAdv,
    "eps_uni": universal_robustness.EpsUni,
    "universal": universal_robustness.Universal,
    "dag": segmentation.DAG,
    "seg_figure": segmentation.SegFigure,
    "synthesis": synthesis.Synthesis,
    "denoise_figure": denoising.DenoiseFigure,
    "stability": perturbation_analyses.Stability,
    "sharedness": perturbation_analyses.Sharedness,
    "universal_epochs": perturbation_analyses.UniversalEpochs,
    "destruction": perturbation_analyses.Destruction,
    "detection": perturbation_analyses.Detection,
    "transfer": perturbation_analyses.Transfer,
})
# Adds an evaluator class to the registry (see `base.Evaluator`).
register_evaluator = EVALUATORS.register


def _entry(entry: Any) -> dict[str, Any]:
  return entry.to_dict() if hasattr(entry, "to_dict") else dict(entry)


def parse(evals: Mapping[str, Any], names: tuple[str, ...] | None = None) -> dict[str, tuple[type[Evaluator], Any]]:
  """Checks a `config.evals` block: every entry's type is registered and its arguments valid.

  Args:
    evals: entry name -> {'type': registry name, **arguments}.
    names: only these entries (all if None); each must exist.

  Returns:
    entry name -> (evaluator class, parsed Args).

  Raises:
    ConfigError: naming the first bad entry or field.
  """
  if names is not None:
    missing = [n for n in names if n not in evals]
    if missing:
      raise ConfigError(f"no evaluation entry named {', '.join(missing)} in config.evals "
                        f"(entries: {', '.join(evals) or 'none'})")
  out = {}
  for name in (evals if names is None else names):
    fields = _entry(evals[name])
    kind = fields.pop("type", None)
    if kind is None:
      raise ConfigError(f"config.evals.{name}: needs a 'type' (one of {', '.join(sorted(EVALUATORS))})")
    try:
      cls = EVALUATORS[kind]
    except ConfigError as e:
      raise ConfigError(f"config.evals.{name}: {e}") from None
    out[name] = (cls, cls.parse_args(name, fields))
  return out


def run(evals: Mapping[str, Any], ctx: EvalContext, variables: Any,
        names: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]]:
  """Runs evaluation entries on the model with `variables`.

  Args:
    evals: a `config.evals` block.
    ctx: the evaluation context.
    variables: the model's variables.
    names: only these entries (all if None).

  Returns:
    {entry name: {value name: value}} in the order of `evals`.
  """
  results = {}
  for name, (cls, args) in parse(evals, names).items():
    results[name] = dict(cls(name, args, ctx).run(variables))
  return results


def scalars(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
  """The numeric leaves of nested results as flat 'a/b/c' names (for metrics.jsonl and TensorBoard)."""
  out = {}
  for key, value in results.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(scalars(value, name + "/"))
    elif isinstance(value, (bool, int, float)) and not isinstance(value, str):
      out[name] = float(value)
  return out


__all__ = ["EVALUATORS", "EvalConfig", "EvalContext", "Evaluator", "attacked_metrics", "base", "clean_metrics", "context",
           "eps_adv_config", "eps_adv_search", "eps_uni_search", "evaluate_universal", "parse", "perturbation_analyses",
           "register_evaluator", "robustness", "run", "scalars", "search", "segmentation", "synthesis",
           "universal_robustness"]
