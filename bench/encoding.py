"""Benchmark of the Encoding layer's forward + backward pass at the PASCAL-Context training shape.

  python bench/encoding.py --out FILE [--repeats N] [--warmup N] [--impls NAME ...]

One step is E = encode(x, C, s) followed by the gradient of sum(E * G) with respect to x, C and s, for a fixed
random cotangent G. Shape: per-device batch B = 2, 60x60 stride-8 features of a 480x480 crop (N = 3600),
D = 512, K = 32. Four implementations run, each in its own subprocess so that its peak RSS is its own:

  ctxseg_jax       ctxseg_jax.models.layers.encoding.encode, jitted, float32.
  jax_broadcast    the definition written with the (B, N, K, D) residual broadcast, in JAX, jitted, autodiff.
  torch_broadcast  the same broadcast form in PyTorch on CPU (as mmseg and PyTorch-Encoding write it), autograd.
  matmul_roofline  a plain jitted chain of six batched matmuls with the FLOP count below.

Nominal FLOP count (used for every implementation, so the GFLOP/s columns compare like for like). A matmul of
(m, k) by (k, n) counts 2mkn. The matmul form does two matmuls forward (the cross term x.C^T, (N, D)x(D, K), and
the aggregation A^T x, (K, N)x(N, D)) and four backward (dA = x.dE^T, dx = A.dE, and for the distance cross term
dx += dL.C and dC = dL^T x), each of B * 2NKD FLOPs:

  FLOPs = 6 * 2 * B * N * K * D = 12 * 2 * 3600 * 32 * 512 = 1.4156e9.

Elementwise work (distances, softmax, their gradients: O(B * N * (K + D))) is left out; XLA's cost analysis of the
jitted ctxseg_jax step, reported as `xla_flops`, is within a few percent of the nominal count.

Timings are medians over `--repeats` steps after `--warmup` untimed ones (which include compilation). Peak RSS
is the subprocess's ru_maxrss after the timed steps; `rss_before_mib` is ru_maxrss just before them. PyTorch uses
as many intra-op threads as there are CPU cores available to the process, the number XLA's CPU client uses.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import harness  # noqa: E402

IMPLS = ('ctxseg_jax', 'jax_broadcast', 'torch_broadcast', 'matmul_roofline')
SHAPE = {'batch': 2, 'height': 60, 'width': 60, 'channels': 512, 'num_codes': 32}


def nominal_flops(b: int, n: int, k: int, d: int) -> int:
  """Matmul FLOPs of the matmul-form forward + backward pass: six (N, D, K) matmuls per image."""
  return 12 * b * n * k * d


def _dims() -> tuple[int, int, int, int]:
  return SHAPE['batch'], SHAPE['height'] * SHAPE['width'], SHAPE['num_codes'], SHAPE['channels']


def _inputs() -> dict[str, np.ndarray]:
  """Features after the EncModule's ReLU, codewords and scales at their init ranges, a Gaussian cotangent."""
  b, n, k, d = _dims()
  rng = np.random.default_rng(0)
  bound = 1.0 / np.sqrt(k * d)
  return {
      'x': np.maximum(rng.standard_normal((b, n, d), np.float32), 0.0),
      'codewords': rng.uniform(-bound, bound, (k, d)).astype(np.float32),
      'scale': rng.uniform(-1.0, 0.0, (k,)).astype(np.float32),
      'cotangent': rng.standard_normal((b, k, d), np.float32),
  }


def _jax_step(impl: str) -> tuple[Callable[[], Any], dict[str, Any]]:
  """A jitted step closing over device-resident inputs, and extra facts to report."""
  import jax
  import jax.numpy as jnp

  arrays = {name: jnp.asarray(value) for name, value in _inputs().items()}
  extra: dict[str, Any] = {'jax': jax.__version__, 'jax_device': str(jax.devices()[0])}

  if impl == 'matmul_roofline':

    def chain(x, codewords, cotangent):
      c = jnp.broadcast_to(codewords, cotangent.shape)
      p = jnp.einsum('bnd,bkd->bnk', x, c)
      e = jnp.einsum('bnk,bnd->bkd', p, x)
      q = jnp.einsum('bnd,bkd->bnk', x, e + cotangent)
      y = jnp.einsum('bnk,bkd->bnd', p, e)
      z = jnp.einsum('bnk,bkd->bnd', q, c)
      w = jnp.einsum('bnk,bnd->bkd', q, x)
      return e, y, z, w

    fn = jax.jit(chain)
    args = (arrays['x'], arrays['codewords'], arrays['cotangent'])
  else:
    if impl == 'ctxseg_jax':
      from ctxseg_jax.models.layers.encoding import encode
    else:
      encode = _jax_broadcast_encode

    def loss(x, codewords, scale, cotangent):
      return jnp.sum(encode(x, codewords, scale) * cotangent)

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    args = (arrays['x'], arrays['codewords'], arrays['scale'], arrays['cotangent'])

  if impl == 'ctxseg_jax':
    cost = fn.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    extra['xla_flops'] = float(cost['flops'])
  extra['cores'] = harness.num_cores()
  return lambda: jax.block_until_ready(fn(*args)), extra


def _jax_broadcast_encode(x, codewords, scale):
  """The definition with the (B, N, K, D) residuals materialised, as the reference implementations write it."""
  import jax
  import jax.numpy as jnp

  residual = x[:, :, None, :] - codewords  # (B, N, K, D)
  assign = jax.nn.softmax(scale * jnp.sum(residual * residual, axis=-1), axis=-1)
  return jnp.sum(assign[..., None] * residual, axis=1)


def _torch_step() -> tuple[Callable[[], Any], dict[str, Any]]:
  import torch

  torch.set_num_threads(harness.num_cores())
  tensors = {name: torch.from_numpy(value) for name, value in _inputs().items()}
  leaves = [tensors[name].clone().requires_grad_(True) for name in ('x', 'codewords', 'scale')]
  cotangent = tensors['cotangent']
  b, n, k, d = _dims()

  def step():
    x, codewords, scale = leaves
    for leaf in leaves:
      leaf.grad = None
    residual = x.unsqueeze(2).expand(b, n, k, d) - codewords.view(1, 1, k, d)
    scaled_l2 = scale.view(1, 1, k) * residual.pow(2).sum(dim=3)
    assign = torch.softmax(scaled_l2, dim=2)
    encoded = (assign.unsqueeze(3) * residual).sum(dim=1)
    encoded.backward(cotangent)
    return [leaf.grad for leaf in leaves]

  return step, {'torch': torch.__version__, 'torch_threads': torch.get_num_threads()}


def run_worker(impl: str, repeats: int, warmup: int) -> dict[str, Any]:
  """Times one implementation in this process; returns its result row."""
  step, extra = _torch_step() if impl == 'torch_broadcast' else _jax_step(impl)
  timing = harness.time_step(step, repeats, warmup)
  return {'impl': impl, **timing, 'gflops': nominal_flops(*_dims()) / timing['median_s'] / 1e9, **extra}


def main(argv: list[str] | None = None) -> None:
  b, n, k, d = _dims()
  harness.layer_main(argv, script=__file__, doc=__doc__, impls=IMPLS, run_worker=run_worker,
                     shape={**SHAPE, 'n': n, 'nominal_flops': nominal_flops(b, n, k, d)}, baseline='torch_broadcast',
                     unit='ms', repeats=10, warmup=2, first=('ctxseg_jax', 'matmul_roofline'))

if __name__ == '__main__':
  main()
