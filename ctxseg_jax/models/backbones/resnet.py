"""Dilated ResNet backbones (ResNet-18/34/50/101/152) returning the four stage outputs.

Follows mmseg `ResNet` / `ResNetV1c` in 'pytorch' style (the stride sits on the 3x3 conv) and PyTorch-Encoding's
dilated `resnet*s`: output stride 8 or 16 replaces the strides of the last stages by dilation, and with
`contract_dilation` the first block of a dilated stage uses half the stage dilation.

Parameter names mirror the PyTorch modules (`layer3_0/conv2` for `layer3.0.conv2`) to make weight import direct.
"""
from __future__ import annotations

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctxseg_jax import settings
from ctxseg_jax.models.layers.conv import KAIMING_FAN_OUT, ConvBNReLU, Initializer, MaxPool, batch_norm, conv2d
from ctxseg_jax.models.layers.remat import block_type
from ctxseg_jax.settings import Setting

Dtype = Any

# Blocks per stage.
BLOCK_COUNTS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# output_stride -> (per-stage strides, per-stage dilations).
STAGE_STRIDES_DILATIONS = {
    8: ((1, 2, 1, 1), (1, 1, 2, 4)),
    16: ((1, 2, 2, 1), (1, 1, 1, 2)),
    32: ((1, 2, 2, 2), (1, 1, 1, 1)),
}
STEMS = ('pytorch', 'v1c', 's')


def block_plan(depth: int, output_stride: int = 8,
               contract_dilation: bool = True) -> tuple[tuple[tuple[int, int], ...], ...]:
  """Returns, per stage, the (stride, dilation) of each block.

  Only the first block of a stage strides. With `contract_dilation`, the first block of a stage whose dilation
  d is > 1 uses d // 2 (mmseg ResLayer; PyTorch-Encoding's dilated ResNet does the same for d = 2 and 4).

  >>> block_plan(50, 8)[2:]
  (((1, 1), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2)), ((1, 2), (1, 4), (1, 4)))
  """
  if depth not in BLOCK_COUNTS:
    raise ValueError(f'ResNet depth {depth} is not supported; choose one of {sorted(BLOCK_COUNTS)}')
  if output_stride not in STAGE_STRIDES_DILATIONS:
    raise ValueError(f'output_stride {output_stride} is not supported; choose one of '
                     f'{sorted(STAGE_STRIDES_DILATIONS)}')
  strides, dilations = STAGE_STRIDES_DILATIONS[output_stride]
  plan = []
  for num_blocks, stride, dilation in zip(BLOCK_COUNTS[depth], strides, dilations):
    first_dilation = dilation // 2 if contract_dilation and dilation > 1 else dilation
    plan.append(((stride, first_dilation),) + ((1, dilation),) * (num_blocks - 1))
  return tuple(plan)


def stem_widths(stem: str, base_width: int) -> tuple[int, ...]:
  """Output channels of each stem conv: 'pytorch' one 7x7, 'v1c' w/2-w/2-w, 's' w-w-2w."""
  if stem == 'pytorch':
    return (base_width,)
  if stem == 'v1c':
    if base_width % 2:
      raise ValueError(f"the 'v1c' stem halves base_width, which must be even (got {base_width})")
    return (base_width // 2, base_width // 2, base_width)
  if stem == 's':
    return (base_width, base_width, 2 * base_width)
  raise ValueError(f'ResNet stem {stem!r} is not supported; choose one of {list(STEMS)}')


class Stem(nn.Module):
  """Input stem: convs (each BN + ReLU) then a 3x3 stride-2 max-pool with padding 1; output stride 4.

  Attributes:
    kind: 'pytorch' (7x7 stride-2 conv), 'v1c' (mmseg deep stem, 3x3 convs w/2, w/2, w, the first strided) or
      's' (PyTorch-Encoding deep stem, 3x3 convs w, w, 2w, the first strided).
    base_width: w.
    dtype: compute dtype.
  """
  kind: str = 'v1c'
  base_width: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """(B, H, W, 3) -> (B, ceil(H / 4), ceil(W / 4), stem_widths[-1])."""
    widths = stem_widths(self.kind, self.base_width)
    kernel = 7 if self.kind == 'pytorch' else 3
    for i, width in enumerate(widths):
      x = ConvBNReLU(width, kernel, stride=2 if i == 0 else 1, dtype=self.dtype, name=f'conv{i + 1}')(
          x, train=train)
    return MaxPool(3, 2, 1, name='maxpool')(x)


class BasicBlock(nn.Module):
  """Two-conv residual block (ResNet-18/34), as mmseg's BasicBlock.

  conv1 is 3x3 with the block's stride and dilation; conv2 is a plain 3x3 (padding 1, no dilation), as in mmseg
  (PyTorch-Encoding would dilate conv2 too). A 1x1 conv + BN projects the shortcut when the stride or the
  channel count changes.

  Attributes:
    planes: output channels (expansion 1).
    stride: stride of conv1 and of the shortcut projection.
    dilation: dilation of conv1.
    zero_init_last: initialise the last BN scale to 0 (mmseg `zero_init_residual`).
    kernel_init: initialiser of every conv kernel (HRNet: N(0, 0.001)).
    dtype: compute dtype.
  """
  planes: int
  stride: int = 1
  dilation: int = 1
  zero_init_last: bool = False
  kernel_init: Initializer = KAIMING_FAN_OUT
  dtype: Dtype = jnp.float32
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """(B, H, W, C) -> (B, H / stride, W / stride, planes)."""
    last_scale = nn.initializers.zeros if self.zero_init_last else nn.initializers.ones
    conv = functools.partial(conv2d, dtype=self.dtype, kernel_init=self.kernel_init)
    y = conv(self.planes, 3, stride=self.stride, dilation=self.dilation, name='conv1')(x)
    y = nn.relu(batch_norm(train=train, dtype=self.dtype, name='bn1')(y))
    y = conv(self.planes, 3, name='conv2')(y)
    y = batch_norm(train=train, dtype=self.dtype, scale_init=last_scale, name='bn2')(y)
    return nn.relu(y + _shortcut(x, self.planes, self.stride, train, self.dtype, self.kernel_init))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 residual block with expansion 4 (ResNet-50/101/152), 'pytorch' style.

  Attributes:
    planes: width of the inner convs; the output has 4 * planes channels.
    stride: stride of the 3x3 conv and of the shortcut projection.
    dilation: dilation of the 3x3 conv.
    zero_init_last: initialise the last BN scale to 0 (mmseg `zero_init_residual`).
    kernel_init: initialiser of every conv kernel (HRNet: N(0, 0.001)).
    dtype: compute dtype.
  """
  planes: int
  stride: int = 1
  dilation: int = 1
  zero_init_last: bool = False
  kernel_init: Initializer = KAIMING_FAN_OUT
  dtype: Dtype = jnp.float32
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """(B, H, W, C) -> (B, H / stride, W / stride, 4 * planes)."""
    out_channels = self.planes * self.expansion
    last_scale = nn.initializers.zeros if self.zero_init_last else nn.initializers.ones
    conv = functools.partial(conv2d, dtype=self.dtype, kernel_init=self.kernel_init)
    y = conv(self.planes, 1, name='conv1')(x)
    y = nn.relu(batch_norm(train=train, dtype=self.dtype, name='bn1')(y))
    y = conv(self.planes, 3, stride=self.stride, dilation=self.dilation, name='conv2')(y)
    y = nn.relu(batch_norm(train=train, dtype=self.dtype, name='bn2')(y))
    y = conv(out_channels, 1, name='conv3')(y)
    y = batch_norm(train=train, dtype=self.dtype, scale_init=last_scale, name='bn3')(y)
    return nn.relu(y + _shortcut(x, out_channels, self.stride, train, self.dtype, self.kernel_init))


def _shortcut(x: jax.Array, out_channels: int, stride: int, train: bool, dtype: Dtype,
              kernel_init: Initializer) -> jax.Array:
  """Identity, or 1x1 conv (stride) + BN when the shape changes; must be called from a compact method."""
  if stride == 1 and x.shape[-1] == out_channels:
    return x
  x = conv2d(out_channels, 1, stride=stride, dtype=dtype, kernel_init=kernel_init, name='downsample_conv')(x)
  return batch_norm(train=train, dtype=dtype, name='downsample_bn')(x)


class ResNet(nn.Module):
  """Dilated ResNet returning the outputs of its four stages.

  Stage s (0..3) has planes base_width * 2**s; outputs have expansion * planes channels (expansion 1 for depth
  18/34, 4 otherwise). At output stride 8 the outputs have strides (4, 8, 8, 8); at 16, (4, 8, 16, 16); at 32,
  (4, 8, 16, 32).

  Attributes:
    depth: 18, 34, 50, 101 or 152.
    stem: 'pytorch', 'v1c' or 's' (see `Stem`).
    base_width: channels of the first stage (64 in every reference).
    output_stride: 8, 16 or 32.
    contract_dilation: the first block of a dilated stage uses half the dilation (mmseg, PyTorch-Encoding).
    zero_init_residual: initialise the last BN scale of every block to 0, as mmseg's ResNet does by default
      when it is not loading pretrained weights (PyTorch-Encoding and torchvision use 1).
    dtype: compute dtype; parameters are float32.
    remat: in training, rematerialise the stem and every block (layers.remat).
  """
  depth: int = 50
  stem: str = 'v1c'
  base_width: int = 64
  output_stride: int = 8
  contract_dilation: bool = True
  zero_init_residual: bool = True
  dtype: Dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
    """(B, H, W, 3) normalised images -> four (B, ceil(H / s_i), ceil(W / s_i), C_i) arrays in `dtype`."""
    plan = block_plan(self.depth, self.output_stride, self.contract_dilation)
    remat = self.remat and train  # nothing to save for a backward pass otherwise
    block_cls = block_type(BasicBlock if self.depth < 50 else Bottleneck, remat)
    x = block_type(Stem, remat)(self.stem, self.base_width, dtype=self.dtype, name='stem')(x, train)
    outputs = []
    for stage, blocks in enumerate(plan):
      for index, (stride, dilation) in enumerate(blocks):
        x = block_cls(self.base_width * 2**stage, stride=stride, dilation=dilation,
                      zero_init_last=self.zero_init_residual, dtype=self.dtype,
                      name=f'layer{stage + 1}_{index}')(x, train)
      outputs.append(x)
    return outputs


SETTINGS = {
    'depth': Setting(50, '18, 34, 50, 101 or 152', choices=tuple(BLOCK_COUNTS)),
    'stem': Setting('v1c', "'v1c' (mmseg, 3x3 32-32-64), 's' (PyTorch-Encoding, 64-64-128), 'pytorch' (7x7)",
                    choices=STEMS),
    'base_width': Setting(64, 'channels of the first stage; 64 is the reference, smaller for CPU demos',
                          rule=settings.POSITIVE),
    'output_stride': Setting(8, '8: dilations (1,1,2,4); 16: (1,1,1,2); 32: no dilation',
                             choices=tuple(STAGE_STRIDES_DILATIONS)),
    'contract_dilation': Setting(True, 'first block of a dilated stage uses half the dilation (mmseg, PTE)'),
    'zero_init_residual': Setting(True, 'last BN of each block starts at scale 0 (mmseg; torchvision: False)'),
}


def build(config, *, dtype: Dtype, remat: bool = False) -> ResNet:
  """The dilated ResNet of a backbone config (SETTINGS' keys); `remat`: config.model.remat."""
  return ResNet(depth=config.depth, stem=config.stem, base_width=config.base_width,
                output_stride=config.output_stride, contract_dilation=config.contract_dilation,
                zero_init_residual=config.zero_init_residual, dtype=dtype, remat=remat)


COMPONENT = settings.Component(build, SETTINGS, outputs=('stage1', 'stage2', 'stage3', 'stage4'),
                               doc='dilated ResNet (mmseg ResNetV1c, PyTorch-Encoding resnet*s)')
