"""Per-program CPU compiler options (advjax.cpu.compilation)."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from advjax.cpu import compilation, tuning

# Wide enough (32 channels) that jaxlib 0.10 sends the convolution to YNNPACK by default.
SHAPE = (1, 8, 8, 32)


def _conv_and_matmul(x, w, m):
  y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y, x.reshape(-1, x.shape[-1]) @ m


def _args():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k1, SHAPE)
  w = jax.random.normal(k2, (3, 3, 32, 32)) / 17.0
  m = jax.random.normal(k3, (32, 16)) / 6.0
  return x, w, m


def _ynn_lines(compiled_text, op_name):
  """Definitions of YNNPACK fusions whose source op is `op_name`."""
  pattern = re.compile(r"%ynn_fusion[.\d]* = .*op_name=\"[^\"]*/" + op_name + "\"")
  return [line for line in compiled_text.splitlines() if pattern.search(line)]


def _numpy_conv_same(x, w):
  """Independent float64 reference: 3x3 'SAME' cross-correlation, NHWC x HWIO."""
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, wd = x.shape[1:3]
  out = np.zeros(x.shape[:3] + (w.shape[-1],))
  for a in range(3):
    for b in range(3):
      out += np.einsum("nhwi,io->nhwo", xp[:, a:a + h, b:b + wd], w[a, b])
  return out


def test_cpu_options_name_the_ynn_option_on_cpu_only():
  assert jax.default_backend() == "cpu"
  assert compilation.cpu_compiler_options() == {
      "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
  assert compilation.cpu_compiler_options("gpu") == {}
  assert compilation.cpu_compiler_options("tpu") == {}


def test_option_moves_convolutions_off_ynnpack_and_keeps_matmuls_there():
  args = _args()
  default = jax.jit(_conv_and_matmul).lower(*args).compile().as_text()
  with_option = compilation.jit(_conv_and_matmul).lower(*args).compile().as_text()
  # jaxlib 0.10's default: both ops in YNNPACK fusions (the reason the option exists).
  assert _ynn_lines(default, "conv_general_dilated")
  assert _ynn_lines(default, "dot_general")
  assert not _ynn_lines(with_option, "conv_general_dilated")
  assert _ynn_lines(with_option, "dot_general")


def test_results_match_the_default_compile_and_a_numpy_reference():
  args = _args()
  x, w, m = args
  ref_conv = _numpy_conv_same(x, w)
  ref_mm = np.asarray(x, np.float64).reshape(-1, 32) @ np.asarray(m, np.float64)
  explicit = jax.jit(_conv_and_matmul).lower(*args).compile(compilation.cpu_compiler_options())(*args)
  for conv, mm in (jax.jit(_conv_and_matmul)(*args), compilation.jit(_conv_and_matmul)(*args), explicit):
    np.testing.assert_allclose(conv, ref_conv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mm, ref_mm, rtol=1e-5, atol=1e-5)


def test_jit_forwards_jit_arguments_and_the_callers_options():
  @compilation.jit(static_argnums=1)
  def scale(x, k):
    return x * k

  np.testing.assert_array_equal(scale(jnp.arange(3.0), 4), [0.0, 4.0, 8.0])
  bogus = compilation.jit(lambda x: x + 1, compiler_options={"no_such_xla_option": 1})
  with pytest.raises(jax.errors.JaxRuntimeError, match="no_such_xla_option"):
    bogus(jnp.ones(2))


def test_no_global_side_effect():
  before = os.environ.get("XLA_FLAGS")
  args = _args()
  compilation.jit(_conv_and_matmul)(*args)
  assert os.environ.get("XLA_FLAGS") == before
  # A plain jax.jit compiled afterwards still gets the default (YNNPACK) convolution.
  text = jax.jit(lambda x, w, m: _conv_and_matmul(x, w, m)[0] * 2).lower(*args).compile().as_text()
  assert _ynn_lines(text, "conv_general_dilated")


def test_jitted_function_can_be_nested_in_traced_code():
  # JAX rejects compiler options on a nested jit; the wrapper drops them there.
  args = _args()
  x, w, m = args
  inner = compilation.jit(_conv_and_matmul)
  outer = jax.jit(lambda a, b, c: inner(a, b, c)[0] * 2.0)
  looped = jax.jit(lambda a: lax.fori_loop(0, 2, lambda _, v: inner(v, w, m)[0] / 4.0, a))
  grad = jax.grad(lambda a: jnp.sum(inner(a, w, m)[1]))
  ref_conv = _numpy_conv_same(x, w)
  np.testing.assert_allclose(outer(*args), 2.0 * ref_conv, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(looped(x), _numpy_conv_same(ref_conv / 4.0, w) / 4.0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad(x), np.broadcast_to(np.asarray(m, np.float64).sum(1), SHAPE), rtol=1e-5)
  # The option-carrying program is what a top-level call runs and lowers.
  assert not _ynn_lines(inner.lower(*args).compile().as_text(), "conv_general_dilated")
  assert inner.__name__ == "_conv_and_matmul"


def test_environment_variable_keeps_the_library_path(monkeypatch):
  monkeypatch.setenv(tuning.ENV, "library")
  assert compilation.cpu_compiler_options() == {}
  # Decided at the first call, so a wrapper built before the variable was set follows it.
  text = compilation.jit(_conv_and_matmul).lower(*_args()).compile().as_text()
  assert _ynn_lines(text, "conv_general_dilated")
  monkeypatch.setenv(tuning.ENV, "off")
  assert compilation.cpu_compiler_options() == {} and compilation.cpu_run_once_options() == {}
  monkeypatch.setenv(tuning.ENV, "all_cores")
  assert compilation.cpu_compiler_options() == {
      "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
  monkeypatch.setenv(tuning.ENV, "fast")
  with pytest.raises(ValueError, match="ADVJAX_CPU_TUNING='fast'"):
    compilation.cpu_compiler_options()
  monkeypatch.setenv(tuning.ENV, "all_cores")
  monkeypatch.setenv("ADVJAX_CPU_CONVOLUTIONS", "library")
  with pytest.raises(ValueError, match="ADVJAX_CPU_CONVOLUTIONS is now ADVJAX_CPU_TUNING"):
    compilation.cpu_compiler_options()


def test_advjax_programs_carry_the_option():
  # The attack entry point is compiled with the option: no convolution left in YNNPACK.
  from advjax import attacks
  from advjax.models import create_model
  model = create_model("convnet", num_classes=10)  # 32-channel convolutions: YNNPACK by default
  x = jnp.zeros((2, 28, 28, 1))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), variables)
  logits_fn = attacks.make_logits_fn(model, variables, "eval")
  cfg = attacks.AttackConfig(eps=8.0, step_size=2.0, num_steps=2, init="zero")
  text = attacks.attack.lower(logits_fn, x, jnp.zeros(2, jnp.int32), jax.random.key(0), cfg).compile().as_text()
  assert "convolution" in text
  assert not _ynn_lines(text, "conv_general_dilated")


def test_run_once_options_are_cpu_only():
  assert compilation.cpu_run_once_options("cpu") == {"xla_backend_optimization_level": 1}
  assert compilation.cpu_run_once_options("gpu") == compilation.cpu_run_once_options("tpu") == {}


@pytest.mark.parametrize("name,insert_block", [("convnet", ""), ("resnet20_tiny", "denoise:nonlocal_gaussian")])
def test_run_once_compile_initialises_bit_identically(name, insert_block):
  """Model initialisation compiled for one run (`run_once=True`) draws exactly the default
  compile's values: make train's convnet, and a ResNet with non-local blocks (normal
  embeddings, zero-initialised BatchNorm scales), so checkpoints stay reproducible."""
  from advjax.models import create_model
  from advjax.training import train_state

  model = create_model(name, num_classes=10, insert_block=insert_block)

  def init(key):
    return train_state.init_variables(model, key, (28, 28, 1))

  key = jax.random.key(3)
  quick = compilation.jit(init, run_once=True)(key)
  default = jax.jit(init, compiler_options=compilation.cpu_compiler_options() or None)(key)
  leaves = jax.tree_util.tree_leaves_with_path(quick)
  assert len(leaves) > 10
  for (path, a), b in zip(leaves, jax.tree.leaves(default)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
