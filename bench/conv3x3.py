"""Benchmark of one 3x3 convolution's training work (forward, then the input and weight gradients): XLA against
PyTorch's oneDNN on the CPU, at the shapes of a dilated ResNet-50's train step.

  python bench/conv3x3.py --out FILE [--shapes H,C_IN,C_OUT,DILATION ...] [--repeats N] [--warmup N] [--impls ...]

Each shape is a stride-1 3x3 convolution, padding = dilation, batch 2, on an H x H float32 input with C_IN channels,
without bias. The defaults are those of FCN-R50 and EncNet-R50 (resnet50s, output stride 8) at a 256 crop: the
deep stem's 128x128 convs (64 -> 64, 64 -> 128), layer1 at 64x64, layer2 at 32x32, layer3 (dilation 2), layer4
(dilation 4), and the heads' 3x3 convs on layer3 (1024 -> 256, the auxiliary FCN head) and layer4 (2048 -> 512).
Implementations, each in its own subprocess per shape:

  ctxseg_jax   jax.lax.conv_general_dilated in NHWC / HWIO (what flax's nn.Conv calls): the forward and
               jax.vjp's input and weight gradients, in one jitted function.
  torch_eager  torch.nn.functional.conv2d in NCHW on the CPU, forward and .backward(), with as many threads as
               cores available.

A step is the forward and both gradients for a fixed output gradient; medians over --repeats steps after --warmup.
GFLOP/s counts 3 convolutions' multiply-adds as 2 FLOPs each, padding taps included.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import harness  # noqa: E402

IMPLS = ('ctxseg_jax', 'torch_eager')
BATCH = 2
SHAPES = ((128, 64, 64, 1), (128, 64, 128, 1), (64, 64, 64, 1), (32, 128, 128, 1), (32, 256, 256, 2),
          (32, 512, 512, 4), (32, 1024, 256, 1), (32, 2048, 512, 1))


def _step(impl: str, size: int, c_in: int, c_out: int, dilation: int):
  """A step computing the forward and both gradients of the convolution at this shape, and extra facts."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((BATCH, size, size, c_in), dtype=np.float32)
  w = rng.standard_normal((3, 3, c_in, c_out), dtype=np.float32) * (2 / (9 * c_out))**0.5
  g = rng.standard_normal((BATCH, size, size, c_out), dtype=np.float32)
  if impl == 'torch_eager':
    import torch

    torch.set_num_threads(harness.num_cores())
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    tw = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).requires_grad_()
    tg = torch.from_numpy(g.transpose(0, 3, 1, 2).copy())

    def step():
      tx.grad = tw.grad = None
      torch.nn.functional.conv2d(tx, tw, padding=dilation, dilation=dilation).backward(tg)
    return step, {'torch': torch.__version__, 'torch_threads': torch.get_num_threads()}
  import jax

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((dilation, dilation),) * 2, rhs_dilation=(dilation,) * 2,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  @jax.jit
  def forward_and_gradients(x, w, g):
    y, vjp = jax.vjp(conv, x, w)
    return y, *vjp(g)

  x, w, g = (jax.device_put(a) for a in (x, w, g))
  return lambda: jax.block_until_ready(forward_and_gradients(x, w, g)), {'jax': jax.__version__}


def run_worker(impl: str, shape: tuple[int, ...], repeats: int, warmup: int) -> dict[str, Any]:
  """Times one implementation at one shape in this process; returns its result row."""
  size, c_in, c_out, dilation = shape
  step, extra = _step(impl, size, c_in, c_out, dilation)
  timing = harness.time_step(step, repeats, warmup)
  flops = 3 * 2 * BATCH * size * size * 9 * c_in * c_out
  return {'impl': impl, 'shape': list(shape), **timing, 'gflops': flops / timing['median_s'] / 1e9,
          'cores': harness.num_cores(), **extra}


def main(argv: list[str] | None = None) -> None:
  harness.shapes_main(argv, script=__file__, doc=__doc__, impls=IMPLS, run_worker=run_worker, shapes=SHAPES,
                      baseline='torch_eager', unit='ms', repeats=7, warmup=2)


if __name__ == '__main__':
  main()
