"""Tests of the Encoding layer against the direct (B, N, K, D) broadcast definition of the references."""
from __future__ import annotations

import math
import re

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np
import pytest

from ctxseg_jax.models.layers.encoding import Encoding, encode
from tests.jaxprs import equations

B, N, K, D = 2, 24, 8, 16
RTOL = 1e-4


def _broadcast_encode(x, codewords, scale):
  """The definition as written: residuals materialised as (B, N, K, D)."""
  residual = x[:, :, None, :] - codewords  # (B, N, K, D)
  assign = jax.nn.softmax(scale * jnp.sum(residual * residual, axis=-1), axis=-1)
  return jnp.sum(assign[..., None] * residual, axis=1)


def _naive_expanded_encode(x, codewords, scale):
  """The matmul form without the shift by a reference point."""
  cross = jnp.einsum('bnd,kd->bnk', x, codewords, precision=jax.lax.Precision.HIGHEST)
  dist = jnp.sum(x * x, axis=-1)[:, :, None] - 2.0 * cross + jnp.sum(codewords * codewords, axis=-1)
  assign = jax.nn.softmax(scale * dist, axis=-1)
  return (jnp.einsum('bnk,bnd->bkd', assign, x, precision=jax.lax.Precision.HIGHEST)
          - jnp.sum(assign, axis=1)[:, :, None] * codewords)


def _value_and_grads(fn, x, codewords, scale, cotangent):
  """E and the gradients of sum(E * cotangent) w.r.t. (x, codewords, scale)."""
  value, vjp = jax.vjp(jax.jit(fn), x, codewords, scale)
  return (value, *vjp(cotangent))


def _rel_err(actual, expected) -> float:
  """max |actual - expected| / max |expected|: entries of E and its gradients are signed sums that can be ~0."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def _small_inputs(seed: int = 0):
  """Unit-scale features, codewords and scales at their init ranges, a Gaussian cotangent."""
  rng = np.random.default_rng(seed)
  bound = 1.0 / math.sqrt(K * D)
  return (jnp.asarray(rng.standard_normal((B, N, D)), jnp.float32),
          jnp.asarray(rng.uniform(-bound, bound, (K, D)), jnp.float32),
          jnp.asarray(rng.uniform(-1.0, 0.0, (K,)), jnp.float32),
          jnp.asarray(rng.standard_normal((B, K, D)), jnp.float32))


def _large_inputs(seed: int = 0):
  """Features at 1000 + N(0, 1) with codewords among them: ||x||^2 ~ 1.6e7 against distances ~ 20."""
  rng = np.random.default_rng(seed)
  x = 1000.0 + rng.standard_normal((B, N, D))
  codewords = 1000.0 + 0.5 * rng.standard_normal((K, D))
  return (jnp.asarray(x, jnp.float32), jnp.asarray(codewords, jnp.float32),
          jnp.asarray(rng.uniform(-0.5, -0.05, (K,)), jnp.float32),
          jnp.asarray(rng.standard_normal((B, K, D)), jnp.float32))


@pytest.mark.parametrize('inputs', [_small_inputs, _large_inputs], ids=['unit_scale', 'large_magnitude'])
def test_values_and_gradients_match_broadcast_definition(inputs):
  x, codewords, scale, cotangent = inputs()
  expected = _value_and_grads(_broadcast_encode, x, codewords, scale, cotangent)
  actual = _value_and_grads(encode, x, codewords, scale, cotangent)
  for name, a, e in zip(('E', 'dx', 'dcodewords', 'dscale'), actual, expected):
    assert a.shape == e.shape and a.dtype == jnp.float32, name
    assert _rel_err(a, e) < RTOL, (name, _rel_err(a, e))
  # The assignments are neither one-hot nor uniform, so the comparison exercises the softmax.
  assert float(jnp.std(expected[0])) > 0.0


def test_unshifted_expansion_fails_at_large_magnitude():
  """Without the shift the float32 expansion loses the distances to cancellation: the guard is needed."""
  x, codewords, scale, cotangent = _large_inputs()
  expected = _value_and_grads(_broadcast_encode, x, codewords, scale, cotangent)
  naive = _value_and_grads(_naive_expanded_encode, x, codewords, scale, cotangent)
  assert max(_rel_err(a, e) for a, e in zip(naive, expected)) > 100 * RTOL
  # At unit scale the same naive form is fine, so the failure is the cancellation and not the formula.
  x, codewords, scale, cotangent = _small_inputs()
  expected = _value_and_grads(_broadcast_encode, x, codewords, scale, cotangent)
  naive = _value_and_grads(_naive_expanded_encode, x, codewords, scale, cotangent)
  assert max(_rel_err(a, e) for a, e in zip(naive, expected)) < RTOL


def test_points_on_codewords_give_finite_values_and_gradients():
  x, codewords, scale, cotangent = _small_inputs()
  x = x.at[:, :K].set(codewords)  # rounding in the expansion can make these distances slightly negative
  expected = _value_and_grads(_broadcast_encode, x, codewords, scale, cotangent)
  actual = _value_and_grads(encode, x, codewords, scale, cotangent)
  for a, e in zip(actual, expected):
    assert np.all(np.isfinite(a)) and _rel_err(a, e) < RTOL


def test_bfloat16_input_gives_float32_output():
  x, codewords, scale, cotangent = _small_inputs()
  x_bf16 = x.astype(jnp.bfloat16)
  value, dx, dcodewords, dscale = _value_and_grads(encode, x_bf16, codewords, scale, cotangent)
  assert value.dtype == jnp.float32 and dx.dtype == jnp.bfloat16
  assert dcodewords.dtype == jnp.float32 and dscale.dtype == jnp.float32
  # Exactly the float32 computation on the rounded features ...
  on_rounded = _value_and_grads(encode, x_bf16.astype(jnp.float32), codewords, scale, cotangent)
  assert _rel_err(value, on_rounded[0]) < 1e-5
  # ... and within bfloat16 input rounding of the float32 result.
  full = _value_and_grads(encode, x, codewords, scale, cotangent)
  assert _rel_err(value, full[0]) < 2e-2
  assert _rel_err(dx.astype(jnp.float32), full[1]) < 2e-2


def _intermediate_sizes(jaxpr: jex_core.Jaxpr):
  """Element counts of every value produced in `jaxpr` and in the jaxprs nested in its equations."""
  for eqn in equations(jaxpr):
    for var in eqn.outvars:
      yield math.prod(var.aval.shape)


def _value_and_grad_fn(fn):
  return jax.value_and_grad(lambda x, c, s, g: jnp.sum(fn(x, c, s) * g), argnums=(0, 1, 2))


def test_no_residual_tensor_in_forward_or_backward():
  """Neither the traced forward + backward program nor the compiled one holds a (B, N, K, D)-sized value."""
  args = _small_inputs()
  full = B * N * K * D
  sizes = list(_intermediate_sizes(jax.make_jaxpr(_value_and_grad_fn(encode))(*args).jaxpr))
  assert sizes and max(sizes) < full
  assert B * N * D in sizes  # the backward pass is in the program: dx has been formed
  hlo = jax.jit(_value_and_grad_fn(encode)).lower(*args).compile().as_text()
  shapes = [math.prod(int(d) for d in dims.split(',') if d) for dims in re.findall(r'f32\[([\d,]*)\]', hlo)]
  assert max(shapes) < full
  # The check does see the residual tensor where it exists.
  sizes = list(_intermediate_sizes(jax.make_jaxpr(_value_and_grad_fn(_broadcast_encode))(*args).jaxpr))
  assert max(sizes) >= full


def test_module_init_ranges():
  module = Encoding(num_codes=32)
  x = jnp.zeros((1, 2, 2, 512), jnp.float32)
  params = module.init(jax.random.key(0), x)['params']
  codewords, scale = params['codewords'], params['scale']
  assert codewords.shape == (32, 512) and codewords.dtype == jnp.float32
  assert scale.shape == (32,) and scale.dtype == jnp.float32
  bound = 1.0 / 128.0  # 1 / sqrt(32 * 512)
  assert float(jnp.max(jnp.abs(codewords))) <= bound and float(jnp.max(jnp.abs(codewords))) > 0.99 * bound
  assert abs(float(jnp.mean(codewords))) < 0.02 * bound
  assert float(jnp.min(scale)) >= -1.0 and float(jnp.max(scale)) <= 0.0
  assert float(jnp.max(scale) - jnp.min(scale)) > 0.5


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_module_maps_nhwc_features_to_codes(dtype):
  module = Encoding(num_codes=K, dtype=dtype)
  x = jax.random.normal(jax.random.key(1), (B, 4, 6, D), jnp.float32)
  params = module.init(jax.random.key(0), x)
  out = jax.jit(module.apply)(params, x)
  assert out.shape == (B, K, D) and out.dtype == jnp.float32
  flat = x.astype(dtype).reshape(B, 4 * 6, D)
  expected = jax.jit(encode)(flat, params['params']['codewords'], params['params']['scale'])
  assert _rel_err(out, expected) < 1e-5  # the same computation up to the fusion decisions of two programs
  # Pixels are flattened row-major, as NCHW .view(B, C, -1) flattens them in the references (order is irrelevant
  # to the sum, but the layout must not mix channels into pixels).
  reference = _broadcast_encode(x.astype(dtype).astype(jnp.float32).reshape(B, -1, D),
                                params['params']['codewords'], params['params']['scale'])
  assert _rel_err(out, reference) < RTOL
