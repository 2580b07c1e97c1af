"""Convolution and BatchNorm with PyTorch semantics, and the ConvModule (conv -> BN -> ReLU) block.

Layouts are NHWC with HWIO kernels. Parameters are float32; `dtype` sets the compute dtype.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctxseg_jax.models.layers.linear import uniform

Dtype = Any
Initializer = Callable[..., jax.Array]

# Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (k * k * out_channels)), untruncated. This is mmcv's
# kaiming_init as used by mmseg ConvModule and ResNet, and PyTorch-Encoding's ResNet conv init.
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# The initialisation of a head's convs, by convention: 'mmcv' (Kaiming fan-out ConvModules; classifiers N(0, 0.01);
# biases 0) or 'pytorch' (nn.Conv2d's own reset_parameters, which HRNet-OCR leaves on its heads).
INIT_STYLES = ('mmcv', 'pytorch')
# nn.Conv2d's default kernel init, kaiming_uniform(a=sqrt(5)): U(-b, b) with b = 1 / sqrt(fan_in).
TORCH_DEFAULT_KERNEL = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def conv_init(style: str, in_channels: int, kernel_size: int, *, classifier: bool = False) -> dict[str, Initializer]:
  """`kernel_init` and `bias_init` of a head conv reading `in_channels` through a square `kernel_size` kernel.

  'mmcv': Kaiming normal fan-out, or N(0, 0.01) for a `classifier` (mmseg's conv_seg); biases 0.
  'pytorch': nn.Conv2d's defaults, kernel and bias U(-b, b) with b = 1 / sqrt(in_channels * kernel_size**2).
  """
  if style == 'pytorch':
    bound = (in_channels * kernel_size**2)**-0.5
    return dict(kernel_init=TORCH_DEFAULT_KERNEL, bias_init=uniform(-bound, bound))
  if style != 'mmcv':
    raise ValueError(f'init style {style!r} is not supported; choose one of {list(INIT_STYLES)}')
  return dict(kernel_init=nn.initializers.normal(0.01) if classifier else KAIMING_FAN_OUT,
              bias_init=nn.initializers.zeros)


# PyTorch BatchNorm2d defaults: momentum 0.1 on the new statistic == Flax momentum 0.9 on the running one.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def torch_padding(kernel_size: int, dilation: int = 1) -> int:
  """The symmetric padding that keeps a stride-1 conv size-preserving: dilation * (kernel_size - 1) // 2."""
  return dilation * (kernel_size - 1) // 2


class Conv(nn.Conv):
  """nn.Conv whose 1x1 kernels run as a matrix product (dot_general) over the channels, strided by slicing.

  Same parameters, values and gradients (to float rounding) as nn.Conv. XLA's CPU backend computes the weight
  gradient of a wide 1x1 convolution far more slowly than the equivalent matrix product, and ResNet bottlenecks are
  mostly 1x1 convolutions (bench/train_step.py). Other kernels are nn.Conv's.
  """

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    if tuple(self.kernel_size) != (1, 1) or self.padding not in ((0, 0), ((0, 0), (0, 0)), 'VALID'):
      return super().__call__(inputs)
    kernel = self.param('kernel', self.kernel_init, (1, 1, inputs.shape[-1], self.features), self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    strides = tuple(self.strides or (1, 1))
    if strides != (1, 1):
      inputs = inputs[:, ::strides[0], ::strides[1]]
    y = channel_matmul(inputs, kernel[0, 0], self.precision)
    return y if bias is None else y + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def channel_matmul(x: jax.Array, w: jax.Array, precision: Any = None) -> jax.Array:
  """(..., C_in) @ (C_in, C_out) -> (..., C_out): a 1x1 convolution over the last axis of `x`.

  Its gradient is autodiff's, with the weight gradient written as one matrix product over all positions,
  (C_in, P) @ (P, C_out) with P the positions, the smaller of `x` and the output gradient as the transposed
  operand. Left to itself, XLA's CPU backend transposed the output gradient inside the BatchNorm backward that
  produces it, which cost 10 % of a ResNet-50 train step (bench/profile_step.py).
  """
  return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


def _channel_matmul_fwd(x, w, precision):
  return channel_matmul(x, w, precision), (x, w)


def _channel_matmul_bwd(precision, residuals, g):
  x, w = residuals
  dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  positions = (((0,), (0,)), ((), ()))
  if x2.shape[1] <= g2.shape[1]:
    dw = jax.lax.dot_general(x2, g2, positions, precision=precision)
  else:
    dw = jax.lax.dot_general(g2, x2, positions, precision=precision).T
  return dx, dw.astype(w.dtype)


channel_matmul.defvjp(_channel_matmul_fwd, _channel_matmul_bwd)


def conv2d(features: int,
           kernel_size: int,
           *,
           stride: int = 1,
           dilation: int = 1,
           use_bias: bool = False,
           dtype: Dtype = jnp.float32,
           kernel_init: Initializer = KAIMING_FAN_OUT,
           bias_init: Initializer = nn.initializers.zeros,
           name: str | None = None,
           module: type[nn.Conv] = Conv) -> nn.Conv:
  """A square `Conv` (or `module`, an nn.Conv subclass) padded like PyTorch `Conv2d(padding=dilation * (k - 1) // 2)`.

  The padding is explicit and symmetric. XLA 'SAME' would pad (0, 1) instead of (1, 1) for a stride-2 3x3 conv
  on an even input, shifting every output by one pixel relative to PyTorch.

  Call it inside a parent's `@nn.compact` method; it maps (B, H, W, C_in) to
  (B, floor((H + 2p - dilation * (k - 1) - 1) / stride) + 1, ..., features).
  """
  pad = torch_padding(kernel_size, dilation)
  return module(
      features,
      (kernel_size, kernel_size),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      kernel_dilation=(dilation, dilation),
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=kernel_init,
      bias_init=bias_init,
      name=name)


# How BatchNorm updates its running variance in training: 'unbiased' (PyTorch: the batch variance times n / (n - 1),
# n the values per channel) or 'biased' (Flax: the batch variance). Normalisation uses the biased one either way.
RUNNING_VARS = ('unbiased', 'biased')
_RUNNING_VAR = contextvars.ContextVar('running_var', default='biased')


@contextlib.contextmanager
def running_var(convention: str) -> Iterator[None]:
  """Within the block, every `BatchNorm` called updates its running variance by `convention` (RUNNING_VARS).

  The Segmentor sets it around its forward pass from config.model.bn_running_var, so that the convention reaches
  every BatchNorm of the backbone and heads without an attribute on each module.
  """
  if convention not in RUNNING_VARS:
    raise ValueError(f'BatchNorm running variance {convention!r} is not supported; choose one of {list(RUNNING_VARS)}')
  token = _RUNNING_VAR.set(convention)
  try:
    yield
  finally:
    _RUNNING_VAR.reset(token)


class BatchNorm(nn.BatchNorm):
  """nn.BatchNorm whose running variance follows the `running_var` convention in effect when it is called.

  With 'unbiased', a training step leaves var = m * var_old + (1 - m) * var_batch * n / (n - 1), as
  torch.nn.BatchNorm updates running_var, so fine-tuning from PyTorch weights continues the same statistics.
  Flax has just stored m * var_old + (1 - m) * var_batch; that is rescaled exactly, without a second pass over x.
  """

  def __call__(self, x: jax.Array, use_running_average: bool | None = None, **kwargs) -> jax.Array:
    unbiased = _RUNNING_VAR.get() == 'unbiased'
    old = self.get_variable('batch_stats', 'var') if unbiased else None
    y = super().__call__(x, use_running_average, **kwargs)
    training = not nn.merge_param('use_running_average', self.use_running_average, use_running_average)
    if unbiased and training and old is not None and not self.is_initializing():
      axes = {a % x.ndim for a in ((self.axis,) if isinstance(self.axis, int) else self.axis)}
      n = math.prod(x.shape[a] for a in range(x.ndim) if a not in axes)  # the values per feature
      stored = self.get_variable('batch_stats', 'var')
      # stored - m * old = (1 - m) * var_batch; add (1 - m) * var_batch / (n - 1).
      self.put_variable('batch_stats', 'var', (n * stored - self.momentum * old) / max(n - 1, 1))
    return y


def batch_norm(*,
               train: bool,
               dtype: Dtype = jnp.float32,
               scale_init: Initializer = nn.initializers.ones,
               axis: int = -1,
               name: str | None = None) -> BatchNorm:
  """BatchNorm over `axis` (default the channels, last) with PyTorch defaults: momentum 0.1, eps 1e-5, scale 1,
  bias 0; the running variance follows `running_var`.

  In training mode the statistics are those of the whole (global) batch seen by the jitted computation, which
  is SyncBN when the batch is sharded over devices. Statistics are reduced in float32 whatever `dtype` is.
  """
  return BatchNorm(
      use_running_average=not train,
      axis=axis,
      momentum=BN_MOMENTUM,
      epsilon=BN_EPSILON,
      dtype=dtype,
      param_dtype=jnp.float32,
      scale_init=scale_init,
      bias_init=nn.initializers.zeros,
      name=name)


class ConvBNReLU(nn.Module):
  """mmcv ConvModule: bias-free conv, BatchNorm, then ReLU (unless `activate` is False).

  Attributes:
    features: output channels.
    kernel_size: square kernel size; padding is dilation * (kernel_size - 1) // 2 on each side.
    stride: conv stride.
    dilation: conv dilation.
    activate: apply ReLU after BN.
    use_bias: give the conv a bias before the BN, as HRNet-OCR's biased convs have.
    kernel_init: initialiser of the conv kernel (Kaiming fan-out, as mmcv).
    bias_init: initialiser of the conv bias, when `use_bias`.
    dtype: compute dtype.
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  dilation: int = 1
  activate: bool = True
  use_bias: bool = False
  kernel_init: Initializer = KAIMING_FAN_OUT
  bias_init: Initializer = nn.initializers.zeros
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """(B, H, W, C_in) -> (B, H', W', features) in `dtype`."""
    x = conv2d(self.features, self.kernel_size, stride=self.stride, dilation=self.dilation, use_bias=self.use_bias,
               dtype=self.dtype, kernel_init=self.kernel_init, bias_init=self.bias_init, name='conv')(x)
    x = batch_norm(train=train, dtype=self.dtype, name='bn')(x)
    return nn.relu(x) if self.activate else x


class MaxPool(nn.Module):
  """PyTorch MaxPool2d(window, stride, padding): the windows padded with -inf, as Flax pads a max reduction.

  A module rather than a call of nn.max_pool so that evaluation of a padded batch can zero the padding before it,
  as before every convolution (layers.valid_region)."""
  window: int = 3
  stride: int = 2
  padding: int = 1

  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H', W', C)."""
    pad = ((self.padding, self.padding),) * 2
    return nn.max_pool(x, (self.window,) * 2, strides=(self.stride,) * 2, padding=pad)
