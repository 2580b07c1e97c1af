"""Benchmark of OCRNet's head, forward + backward, at the Cityscapes training shape.

  python bench/ocr_head.py --out FILE [--repeats N] [--warmup N] [--impls NAME ...]

One step is the HRNet-OCR head in training mode (BN on batch statistics, Dropout2d 0.05) on stride-4 HRNetV2-W48
features and the soft-region logits, then the gradient of sum(logits * G) with respect to every parameter and
both inputs, for a fixed random cotangent G. Shape: per-device batch B = 2 of a 512x1024 crop, so 128x256 features
(N = 32768 positions), 720 channels in, C = 512, C_key = 256, K = 19 classes. Three implementations run, each in
its own subprocess so that its peak RSS is its own:

  ctxseg_jax    ctxseg_jax.models.heads.ocr.OCRHead (NHWC, flax), jitted.
  jax_direct    the head as HRNet-OCR writes it (NCHW convs, BatchNorm on batch statistics, the gather and the
                object attention as reshapes, permutes and batched matmuls), in JAX, jitted, autodiff.
  torch_direct  the same form in PyTorch on CPU (nn.Conv2d, nn.BatchNorm2d, nn.Dropout2d), autograd.

All three compute the same function with the same parameter shapes; no form builds an (N, N) tensor. Nominal
FLOP count (used for every implementation, so the GFLOP/s columns compare like for like): the convs and matmuls,
forward 2 x MACs, backward twice the forward (gradients of inputs and weights):

  MACs per image = N (9 * 720 * 512 [bottleneck] + 512 * 256 + 256 * 256 [f_pixel] + 256 * 512 [f_up]
                      + 1024 * 512 [fuse] + 512 * 19 [classifier] + 19 * 512 [gather] + 2 * 19 * 256 [attention])
                   + 19 (2 * 512 * 256 + 256 * 256) [f_object, f_down]

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

IMPLS = ('ctxseg_jax', 'jax_direct', 'torch_direct')
SHAPE = {'batch': 2, 'height': 128, 'width': 256, 'in_channels': 720, 'channels': 512, 'key_channels': 256,
         'num_classes': 19}
DROPOUT = 0.05
EPS = 1e-5


def nominal_flops() -> int:
  """Forward + backward FLOPs of the convs and matmuls (see the module docstring)."""
  b, n = SHAPE['batch'], SHAPE['height'] * SHAPE['width']
  cin, c, ck, k = SHAPE['in_channels'], SHAPE['channels'], SHAPE['key_channels'], SHAPE['num_classes']
  per_position = 9 * cin * c + c * ck + ck * ck + ck * c + 2 * c * c + c * k + k * c + 2 * k * ck
  per_region = 2 * c * ck + ck * ck
  return 3 * 2 * b * (n * per_position + k * per_region)


# (name, kernel size, input channels, output channels, bias): the convs of HRNet-OCR's head, each followed by BN and
# ReLU except 'cls'.
def _layers() -> list[tuple[str, int, int, int, bool]]:
  cin, c, ck, k = SHAPE['in_channels'], SHAPE['channels'], SHAPE['key_channels'], SHAPE['num_classes']
  return [('bottleneck', 3, cin, c, True), ('f_pixel_0', 1, c, ck, False), ('f_pixel_1', 1, ck, ck, False),
          ('f_object_0', 1, c, ck, False), ('f_object_1', 1, ck, ck, False), ('f_down', 1, c, ck, False),
          ('f_up', 1, ck, c, False), ('fuse', 1, 2 * c, c, False), ('cls', 1, c, k, True)]


def _inputs() -> dict[str, np.ndarray]:
  """NCHW features and region logits, a Gaussian cotangent, and OIHW conv weights at PyTorch's init ranges."""
  b, h, w = SHAPE['batch'], SHAPE['height'], SHAPE['width']
  rng = np.random.default_rng(0)
  arrays = {
      'features': np.maximum(rng.standard_normal((b, SHAPE['in_channels'], h, w), np.float32), 0),
      'regions': rng.standard_normal((b, SHAPE['num_classes'], h, w), np.float32),
      'cotangent': rng.standard_normal((b, SHAPE['num_classes'], h, w), np.float32),
  }
  for name, kernel, cin, cout, bias in _layers():
    bound = (cin * kernel * kernel)**-0.5
    arrays[f'{name}.weight'] = rng.uniform(-bound, bound, (cout, cin, kernel, kernel)).astype(np.float32)
    if bias:
      arrays[f'{name}.bias'] = rng.uniform(-bound, bound, (cout,)).astype(np.float32)
  return arrays


def direct_head(params, features, regions, dropout_mask):
  """HRNet-OCR's head in NCHW: conv3x3_ocr, SpatialGather_Module, _ObjectAttentionBlock, SpatialOCR_Module, cls."""
  import jax
  import jax.numpy as jnp

  def conv(name, x):
    weight = params[f'{name}.weight']
    pad = weight.shape[-1] // 2
    y = jax.lax.conv_general_dilated(x, weight, (1, 1), [(pad, pad)] * 2, dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
    return y + params[f'{name}.bias'][None, :, None, None] if f'{name}.bias' in params else y

  def conv_bn_relu(name, x):  # BN weight 1, bias 0 (their init), batch statistics
    y = conv(name, x)
    mean = y.mean(axis=(0, 2, 3), keepdims=True)
    var = y.var(axis=(0, 2, 3), keepdims=True)
    return jax.nn.relu((y - mean) / jnp.sqrt(var + EPS))

  b, _, h, w = features.shape
  feats = conv_bn_relu('bottleneck', features)
  c, k = feats.shape[1], regions.shape[1]
  probs = jax.nn.softmax(regions.reshape(b, k, -1), axis=2)
  proxy = jnp.matmul(probs, feats.reshape(b, c, -1).transpose(0, 2, 1)).transpose(0, 2, 1)[..., None]  # (B, C, K, 1)
  query = conv_bn_relu('f_pixel_1', conv_bn_relu('f_pixel_0', feats))
  ck = query.shape[1]
  query = query.reshape(b, ck, -1).transpose(0, 2, 1)
  key = conv_bn_relu('f_object_1', conv_bn_relu('f_object_0', proxy)).reshape(b, ck, -1)
  value = conv_bn_relu('f_down', proxy).reshape(b, ck, -1).transpose(0, 2, 1)
  sim = jax.nn.softmax(jnp.matmul(query, key) * ck**-0.5, axis=-1)
  context = jnp.matmul(sim, value).transpose(0, 2, 1).reshape(b, ck, h, w)
  context = conv_bn_relu('f_up', context)
  out = conv_bn_relu('fuse', jnp.concatenate([context, feats], axis=1)) * dropout_mask
  return conv('cls', out)


def _jax_step(impl: str) -> tuple[Callable[[], Any], dict[str, Any]]:
  """A jitted forward + backward step closing over device-resident inputs, and extra facts to report."""
  import jax
  import jax.numpy as jnp

  arrays = _inputs()
  extra: dict[str, Any] = {'jax': jax.__version__, 'jax_device': str(jax.devices()[0]), 'cores': harness.num_cores()}
  if impl == 'ctxseg_jax':
    from ctxseg_jax.models.heads.ocr import OCRHead

    head = OCRHead(num_classes=SHAPE['num_classes'], channels=SHAPE['channels'],
                   key_channels=SHAPE['key_channels'], dropout=DROPOUT, weight_init='pytorch')
    nhwc = {name: jnp.asarray(arrays[name].transpose(0, 2, 3, 1)) for name in ('features', 'regions', 'cotangent')}
    variables = head.init({'params': jax.random.key(0)}, nhwc['features'][:1, :8, :8], nhwc['regions'][:1, :8, :8],
                          train=False)

    def loss(params, features, regions, key):
      logits, _ = head.apply({'params': params, 'batch_stats': variables['batch_stats']}, features, regions,
                             train=True, mutable=['batch_stats'], rngs={'dropout': key})
      return jnp.sum(logits * nhwc['cotangent'])

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    args = (variables['params'], nhwc['features'], nhwc['regions'], jax.random.key(1))
  else:
    params = {name: jnp.asarray(value) for name, value in arrays.items() if '.' in name}
    cotangent = jnp.asarray(arrays['cotangent'])
    b, c = SHAPE['batch'], SHAPE['channels']

    def loss(params, features, regions, key):
      mask = jax.random.bernoulli(key, 1 - DROPOUT, (b, c, 1, 1)) / (1 - DROPOUT)
      return jnp.sum(direct_head(params, features, regions, mask) * cotangent)

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    args = (params, jnp.asarray(arrays['features']), jnp.asarray(arrays['regions']), jax.random.key(1))
  cost = fn.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  extra['xla_flops'] = float(cost['flops'])
  return lambda: jax.block_until_ready(fn(*args)), extra


def _torch_step() -> tuple[Callable[[], Any], dict[str, Any]]:
  """HRNet-OCR's head as its modules write it, in PyTorch on the CPU, in training mode."""
  import torch
  from torch import nn

  torch.set_num_threads(harness.num_cores())
  arrays = _inputs()

  def conv_bn_relu(name, kernel, cin, cout, bias):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias), nn.BatchNorm2d(cout),
                         nn.ReLU())

  layers = {name: (nn.Conv2d(cin, cout, kernel, bias=bias) if name == 'cls' else
                   conv_bn_relu(name, kernel, cin, cout, bias)) for name, kernel, cin, cout, bias in _layers()}
  with torch.no_grad():
    for name, layer in layers.items():
      conv = layer if name == 'cls' else layer[0]
      conv.weight.copy_(torch.from_numpy(arrays[f'{name}.weight']))
      if conv.bias is not None:
        conv.bias.copy_(torch.from_numpy(arrays[f'{name}.bias']))
  module = nn.ModuleDict(layers).train()
  dropout = nn.Dropout2d(DROPOUT)
  features = torch.from_numpy(arrays['features']).requires_grad_(True)
  regions = torch.from_numpy(arrays['regions']).requires_grad_(True)
  cotangent = torch.from_numpy(arrays['cotangent'])

  def step():
    module.zero_grad(set_to_none=True)
    features.grad = regions.grad = None
    b, _, h, w = features.shape
    feats = module['bottleneck'](features)
    c, k = feats.size(1), regions.size(1)
    probs = torch.softmax(regions.view(b, k, -1), dim=2)
    proxy = torch.matmul(probs, feats.view(b, c, -1).permute(0, 2, 1)).permute(0, 2, 1).unsqueeze(3)
    query = module['f_pixel_1'](module['f_pixel_0'](feats))
    ck = query.size(1)
    query = query.view(b, ck, -1).permute(0, 2, 1)
    key = module['f_object_1'](module['f_object_0'](proxy)).view(b, ck, -1)
    value = module['f_down'](proxy).view(b, ck, -1).permute(0, 2, 1)
    sim = torch.softmax(torch.matmul(query, key) * ck**-0.5, dim=-1)
    context = torch.matmul(sim, value).permute(0, 2, 1).contiguous().view(b, ck, h, w)
    context = module['f_up'](context)
    out = dropout(module['fuse'](torch.cat([context, feats], 1)))
    module['cls'](out).backward(cotangent)
    return features.grad

  return step, {'torch': torch.__version__, 'torch_threads': torch.get_num_threads()}


def run_worker(impl: str, repeats: int, warmup: int) -> dict[str, Any]:
  """Times one implementation in this process; returns its result row."""
  step, extra = _torch_step() if impl == 'torch_direct' else _jax_step(impl)
  timing = harness.time_step(step, repeats, warmup)
  return {'impl': impl, **timing, 'gflops': nominal_flops() / timing['median_s'] / 1e9, **extra}


def main(argv: list[str] | None = None) -> None:
  harness.layer_main(argv, script=__file__, doc=__doc__, impls=IMPLS, run_worker=run_worker,
                     shape={**SHAPE, 'nominal_flops': nominal_flops()}, baseline='torch_direct', unit='s', repeats=5,
                     warmup=1)

if __name__ == '__main__':
  main()
