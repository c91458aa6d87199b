"""The benchmarks' JAX/PyTorch agreement checks, on a tiny model, so the comparison code cannot rot.

Each workload's `check()` runs the JAX step and its PyTorch twin from the
same weights and raises `AgreementError` if they disagree; here they must
pass, and a deliberately different PyTorch side must fail. No timing.
"""

import numpy as np
import pytest
import torch

from benchmarks import (bench_advprop, bench_fgsm, bench_fwd_bwd, bench_pgd, bench_pgd_at, bench_pgd_restarts,
                        bench_shared_at, bench_uat, harness)

SPEC = harness.Spec(model="resnet20_tiny", batch=4, steps=2, torch_compile=False)


@pytest.mark.parametrize("module", [bench_fwd_bwd, bench_pgd, bench_pgd_at, bench_shared_at, bench_uat,
                                    bench_advprop],
                         ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_jax_and_torch_sides_agree(module):
  workload = module.build(SPEC)
  errors = workload.check()
  assert errors and all(np.isfinite(v) for v in errors.values())
  assert "jax" in workload.timers and "torch eager" in workload.timers


def test_parallel_restarts_and_fgsm_agree_with_torch_on_the_digit_convnet():
  # The convnet rows: the torch twin is trained briefly on the digits, then bridged.
  spec = harness.Spec(model="convnet_tiny", batch=8, steps=2, torch_compile=False)
  for module in (bench_pgd_restarts, bench_fgsm):
    workload = module.build(spec)
    errors = workload.check()
    assert errors and all(np.isfinite(v) for v in errors.values())
    assert "jax" in workload.timers and "torch eager" in workload.timers


def test_check_fails_when_the_sides_differ(monkeypatch):
  # A PyTorch attack with twice the step size is a different computation.
  original = bench_pgd.torch_pgd
  monkeypatch.setattr(bench_pgd, "torch_pgd",
                      lambda tm, x, y, *, eps, alpha, steps, dtype="float32":
                      original(tm, x, y, eps=eps, alpha=2 * alpha, steps=steps, dtype=dtype))
  with pytest.raises(harness.AgreementError, match="torch loop"):
    bench_pgd.build(SPEC).check()


def test_heap_check_fails_for_per_example_perturbations(monkeypatch):
  original = bench_shared_at.torch_heap_pgd
  monkeypatch.setattr(bench_shared_at, "torch_heap_pgd",
                      lambda *args, heap_size, **kw: original(*args, heap_size=1, **kw))
  with pytest.raises(harness.AgreementError):
    bench_shared_at.build(SPEC).check()


def test_advprop_check_fails_when_the_twin_shares_the_batchnorms(monkeypatch):
  # Both passes through one BN set is the mixture-BN baseline, not AdvProp.
  monkeypatch.setattr(bench_advprop, "aux_twin", lambda tm: tm)
  with pytest.raises(harness.AgreementError):
    bench_advprop.build(SPEC).check()


def test_interleaved_timing_reports_every_variant():
  timings = harness.time_interleaved({"a": lambda: None, "b": lambda: torch.zeros(1)},
                                     warmup=1, min_reps=4, max_reps=4, budget_s=0.0,
                                     log=lambda *_: None)
  assert set(timings) == {"a", "b"}
  assert all(t.reps == 4 and t.q1_s <= t.median_s <= t.q3_s for t in timings.values())


def _inductor_failure():
  raise AssertionError("expected size 11==11, stride 1==1024 at dim=1")


def test_an_optional_variant_that_fails_is_left_out_and_reported():
  # Inductor can fail at the first call of a compiled step (it did on the FCN's replication
  # padding backward); the eager rows are still timed.
  failures = {}
  timings = harness.time_interleaved({"a": lambda: None, harness.TORCH_COMPILE: _inductor_failure},
                                     warmup=1, min_reps=2, max_reps=2, budget_s=0.0, log=lambda *_: None,
                                     optional=(harness.TORCH_COMPILE,), failures=failures)
  assert set(timings) == {"a"}
  assert failures == {harness.TORCH_COMPILE: "AssertionError: expected size 11==11, stride 1==1024 at dim=1"}


def test_a_row_whose_compiled_variant_fails_is_timed_without_it_and_says_why():
  workload = harness.Workload(
      name="toy", spec=SPEC, check=lambda: {"loss": 0.0}, flops=lambda: 1.0,
      timers={"jax": lambda: None, "torch eager": lambda: torch.zeros(1), harness.TORCH_COMPILE: _inductor_failure})
  rows = harness.run_workload(workload, budget_s=0.0, min_reps=2, log=lambda *_: None)
  assert [r["variant"] for r in rows] == ["jax", "torch eager"]
  assert any(n.startswith("torch.compile not timed: it failed to run (AssertionError: expected size")
             for n in rows[0]["notes"])


def test_a_failing_required_variant_ends_the_timing():
  with pytest.raises(AssertionError, match="stride"):
    harness.time_interleaved({"a": lambda: None, "jax": _inductor_failure}, warmup=1, min_reps=2,
                             max_reps=2, budget_s=0.0, log=lambda *_: None, optional=(harness.TORCH_COMPILE,))


def test_cost_ratio_benchmark_runs(capsys):
  """The chosen objectives' steps build and run, and the ratios they allow are printed.

  Two variants keep it short; every objective's step is built and run by its training tests.
  """
  from benchmarks import bench_cost_ratios
  bench_cost_ratios.main(["--model", "resnet20_tiny", "--batch", "8", "--steps", "1", "--heap_size", "4",
                          "--budget", "0.01", "--variants", "pgd_at,shared_at"])
  out = capsys.readouterr().out
  for variant in ("pgd_at", "shared_at"):
    assert f"| {variant} |" in out
  assert "| advprop |" not in out and "| natural |" not in out
  assert "heap step / PGD step" in out and "AdvProp step / PGD step" not in out


def test_pass_probe_prints_every_row(capsys):
  from benchmarks import probe_passes
  probe_passes.main(["--model", "resnet20_tiny", "--batch", "2", "--budget", "0.01"])
  out = capsys.readouterr().out
  assert out.count("| conv ") == 3 * len(probe_passes.STAGES) and out.count(" kernel grad |") == len(probe_passes.STAGES)
  assert "| forward + input grad |" in out and "| forward + weight grads |" in out


def test_segmentation_rows_agree_and_fail_on_a_wrong_weight_copy(monkeypatch):
  """seg_pgd_at and dag on the tiny digit-canvas FCN; then a twin loaded with the convnet bridge's
  layout for the transposed convolutions too ([out, in] where ConvTranspose2d wants [in, out],
  same shape here) must fail the check."""
  import jax

  from advjax import bridge
  from benchmarks import bench_dag, bench_seg
  spec = harness.Spec(model="convnet_dense_tiny", batch=4, steps=2, torch_compile=False)
  for module in (bench_seg, bench_dag):
    workload = module.build(spec)
    errors = workload.check()
    assert errors and all(np.isfinite(v) for v in errors.values())
    assert "jax" in workload.timers and "torch eager" in workload.timers
  unit, iterations = workload.work()
  assert unit == "DAG iterations" and iterations > 0
  monkeypatch.setattr(bench_seg, "twin_state_dict",
                      lambda variables: bridge.flax_to_torch(jax.device_get(variables), "convnet"))
  with pytest.raises(harness.AgreementError):
    bench_seg.build(spec).check()


def test_matmul_flops_counts_convolutions_and_dots_exactly():
  # Independent of the code under test: multiply-adds written out by hand.
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(8, (3, 3), strides=2, padding="SAME")(x))
      x = nn.relu(nn.Conv(6, (3, 3), feature_group_count=2, padding="VALID")(x))
      return nn.Dense(5)(x.reshape((x.shape[0], -1)))

  x = jnp.ones((2, 10, 10, 4))
  params = Net().init(jax.random.key(0), x)
  # Conv 1: 10 -> 5 per side at stride 2 (SAME pads one pixel after the end), so of the
  # 5 x 3 (output, tap) pairs per side one lands on padding: 14 x 14 pairs, 8 filters
  # of 4 input channels. Conv 2 (VALID, 2 groups): 3 x 3 outputs x 3 x 3 taps, 6 filters
  # of 4 of the 8 channels. Dense: 54 -> 5. Batch 2, two FLOPs per multiply-add.
  forward = 2 * 2 * (14 * 14 * 8 * 4 + 3 * 3 * 3 * 3 * 6 * 4 + 54 * 5)
  loss = lambda p, x: Net().apply(p, x).sum()
  assert harness.matmul_flops(loss, params, x) == forward
  # A gradient with respect to weights and inputs is two more passes of the same size
  # (the strided convolution's input gradient convolves a dilated map: its zeros are
  # no arithmetic).
  assert harness.matmul_flops(jax.grad(loss, argnums=(0, 1)), params, x) == 3 * forward
  # A scan counts its body once per iteration.
  scanned = lambda p, x: jax.lax.scan(lambda c, _: (c + loss(p, x), None), 0.0, None, length=4)[0]
  assert harness.matmul_flops(scanned, params, x) == 4 * forward
  # XLA's own count of the same program (which also counts the elementwise work)
  # agrees within a few percent.
  assert 0.9 < harness.xla_flops(loss, params, x) / forward < 1.1


def test_denoising_cost_benchmark_reports_each_variants_share(capsys):
  from benchmarks import bench_denoise_cost
  bench_denoise_cost.main(["--model", "resnet20_tiny", "--image-size", "8", "--channels", "3", "--batch", "2",
                           "--steps", "1", "--budget", "0.01", "--variants", "baseline,nonlocal_dot_affinity"])
  rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
  assert [r[0] for r in rows] == ["| baseline", "| nonlocal_dot_affinity"]
  assert [r[1] for r in rows] == ["0", "3"]  # One block after each of the three stages.
  # The arithmetic of the table, on timings given here (the measured ones are noise at this size).
  timing = lambda s: harness.Timing(s, s, s, 5, s)  # noqa: E731
  costs = bench_denoise_cost.costs({"baseline": timing(0.5), "mean": timing(0.8)}, {"baseline": 0, "mean": 3})
  assert costs["baseline"] == {"extra_s": 0.0, "share": 0.0, "per_block_s": None}
  assert costs["mean"]["extra_s"] == pytest.approx(0.3) and costs["mean"]["share"] == pytest.approx(0.375)
  assert costs["mean"]["per_block_s"] == pytest.approx(0.1)
