"""One AdvProp step (Xie thesis ch. 7, algorithm 2), JAX vs PyTorch on identical weights.

The step: PGD-k (as in `bench_pgd_at`: L-inf, eps 8/255, step 2/255, from the
clean image) attacks the network normalised by the *auxiliary* BatchNorms
(their running statistics, attack_bn_mode 'eval', as the PGD-AT step attacks
through the main ones); then the clean batch goes through the main BNs and
the adversarial batch through the auxiliary BNs, both in training mode, and
one SGD-momentum update of every weight follows on
(sum CE(clean) + sum CE(adv)) / B. So the step is the PGD-k step plus one
clean training pass.

The JAX side is the library's `advprop` step: the auxiliary set is a second
set of BN parameters (`scale_adv`, `bias_adv`) and the collection
'batch_stats_adv' beside the main ones (`advjax.models.aux_bn`). The PyTorch
side is the usual idiom: a twin module tying every parameter of the model
except its BatchNorms. Both BN sets start from the main set's values: a
fresh auxiliary set (running mean 0, variance 1) leaves the eval-mode
network un-normalised, its logits saturate, and the attack's sign gradients
become rounding noise that no two float32 implementations share.

Checked: after one step from the same state the updates of the shared
weights, of both BN sets' affine parameters and both sets' running
statistics agree.

Run: `python -m benchmarks.bench_advprop [--models resnet20 --steps 7]`.
"""

from __future__ import annotations

import copy
import types

import jax
import jax.numpy as jnp
import torch
import torch.nn.functional as F

from advjax.attacks import threat
from advjax.models import aux_bn
from benchmarks import bench_pgd, bench_pgd_at, harness

OBJECTIVE = "advprop"
BN_SET = "adv"


def aux_twin(tm: torch.nn.Module) -> torch.nn.Module:
  """A module sharing every parameter of `tm` except the BatchNorms', which start as copies.

  A `torch.compile`d `tm` gives a compiled twin of its original module.
  """
  base = getattr(tm, "_orig_mod", tm)
  twin = copy.deepcopy(base)
  for mod, own in zip(base.modules(), twin.modules()):
    if not isinstance(own, torch.nn.modules.batchnorm._BatchNorm):
      for name, p in mod.named_parameters(recurse=False):
        setattr(own, name, p)  # The same Parameter object: a shared weight.
  return torch.compile(twin) if base is not tm else twin


def aux_set_from_main(variables: dict, bn_set: str) -> dict:
  """`variables` plus auxiliary set `bn_set` holding copies of the main set's values."""

  def add(params):
    if not isinstance(params, dict):
      return params
    out = {k: add(v) for k, v in params.items()}
    if "scale" in out:
      out[f"scale_{bn_set}"], out[f"bias_{bn_set}"] = jnp.copy(out["scale"]), jnp.copy(out["bias"])
    return out

  return {**variables, "params": add(variables["params"]),
          aux_bn.collection(bn_set): jax.tree.map(jnp.copy, variables["batch_stats"])}


def make_optimizer(tm: torch.nn.Module, aux: torch.nn.Module):
  """SGD-momentum over the union of both modules' parameters (shared ones once)."""
  params = {id(p): p for p in (*tm.parameters(), *aux.parameters())}
  return torch.optim.SGD(params.values(), lr=bench_pgd_at.LEARNING_RATE, momentum=bench_pgd_at.MOMENTUM)


def torch_advprop_step(tm, aux, opt, x, y, *, steps: int, dtype: str) -> None:
  """Attack through the auxiliary BNs (eval mode), then one SGD step on L^c + L^a."""
  aux.eval()
  x_adv = bench_pgd.torch_pgd(aux, x, y, eps=threat.to_unit(bench_pgd.EPS),
                              alpha=threat.to_unit(bench_pgd.STEP_SIZE), steps=steps, dtype=dtype)
  tm.train()
  aux.train()
  opt.zero_grad(set_to_none=True)
  with harness.autocast(dtype):
    clean, adv = tm(x).float(), aux(x_adv).float()
  loss = (F.cross_entropy(clean, y, reduction="sum") + F.cross_entropy(adv, y, reduction="sum")) / x.shape[0]
  loss.backward()
  opt.step()


def _set_view(params, bn_set: str):
  """`params` with each BatchNorm's scale and bias replaced by set `bn_set`'s."""
  if not isinstance(params, dict):
    return params
  out = {k: _set_view(v, bn_set) for k, v in params.items()}
  if f"scale_{bn_set}" in out:
    out["scale"], out["bias"] = out.pop(f"scale_{bn_set}"), out.pop(f"bias_{bn_set}")
  return out


def build(spec: harness.Spec) -> harness.Workload:
  m = harness.matched_models(spec)
  x, y = harness.make_batch(spec)
  batch = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
  variables = aux_set_from_main(m.variables, BN_SET)
  collection = aux_bn.collection(BN_SET)

  def configure(c):
    c.advprop.adv_bn = BN_SET
    c.advprop.bn_mode = "eval"

  step, fresh_state, _, _ = bench_pgd_at.jax_train_step(m, spec, OBJECTIVE, configure=configure,
                                                        variables=variables)
  notes = ["attack through the auxiliary BNs' running statistics, from the clean image; "
           "one clean and one adversarial training pass"]
  tol = 10 * harness.TOLERANCE[spec.dtype]

  def check():
    before_main = harness.torch_params(m.torch_model)
    before_aux = harness.torch_params(aux_twin(m.torch_model))
    state, _ = step(fresh_state(), batch)
    main_view = types.SimpleNamespace(variables=aux_bn.export_main(state.variables))
    aux_view = types.SimpleNamespace(variables={"params": _set_view(state.params, BN_SET),
                                                "batch_stats": state.model_state[collection]})
    tm = copy.deepcopy(m.torch_model)
    aux = aux_twin(tm)
    xt, yt = harness.to_torch(x, y)
    torch_advprop_step(tm, aux, make_optimizer(tm, aux), xt, yt, steps=spec.steps, dtype=spec.dtype)
    ref = harness.float64_twin(m.torch_model)
    aux_ref = aux_twin(ref)
    torch_advprop_step(ref, aux_ref, make_optimizer(ref, aux_ref), xt.double(), yt, steps=spec.steps,
                       dtype="float32")
    errors = {f"main set {k}": v for k, v in
              bench_pgd_at.check_update(spec, before_main, main_view, tm, tol, ref).items()}
    errors.update({f"aux set {k}": v for k, v in
                   bench_pgd_at.check_update(spec, before_aux, aux_view, aux, tol, aux_ref).items()})
    return errors

  def torch_run(tm, xt, yt, channels_last):
    aux = aux_twin(tm)
    opt = make_optimizer(tm, aux)
    return lambda: torch_advprop_step(tm, aux, opt, xt, yt, steps=spec.steps, dtype=spec.dtype)

  timers = bench_pgd_at.train_step_timers(step, fresh_state, batch, m, spec, x, y, notes, torch_run)
  return harness.Workload(f"advprop{spec.steps}", spec, check, timers,
                          lambda: bench_pgd_at.step_flops(m, spec, batch, training_passes=2), notes)


if __name__ == "__main__":
  harness.main(build, steps=None)
