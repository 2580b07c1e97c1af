"""The shallow residual network of EncNet's CIFAR-10 experiment (Zhang et al., CVPR 2018, the 14-layer network with
3.45% error), with or without its Context Encoding Modules.

Follows PyTorch-Encoding's recognition code (experiments/recognition/model/encnet.py and mynn.py, the model run as
`--model encnetdrop --widen 8 --ncodes 32`): a 3x3 conv (with bias) + BN + ReLU, then three stages of post-activation
basic blocks at widths w, 2w, 4w (strides 1, 2, 2); every block gates its residual branch with a Context Encoding
Module before the shortcut is added. With two blocks a stage the network has 1 + 3 x 2 x 2 = 13 conv layers, and the
classifier head (heads/classifier.py) makes 14. Parameters follow PyTorch's default initialisation, which that code
keeps.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctxseg_jax import settings
from ctxseg_jax.models.layers.conv import TORCH_DEFAULT_KERNEL, ConvBNReLU, conv2d, conv_init
from ctxseg_jax.models.layers.encoding import Encoding
from ctxseg_jax.models.layers.linear import torch_linear
from ctxseg_jax.models.layers.remat import block_type
from ctxseg_jax.settings import Setting

Dtype = Any
STRIDES = (1, 2, 2)
# PyTorch-Encoding's Normalize layer (F.normalize with this eps) on the flattened encoding.
_NORMALIZE_EPS = 1e-8


class EncodingGate(nn.Module):
  """The Context Encoding Module of a residual block (PyTorch-Encoding's EncLayer / EncDropLayer): a global
  encoding of the feature map scales its channels.

  Layers (C = channels, D = C / reduction, K = num_codes):
    project: 1x1 conv C -> D with bias, BN, ReLU.
    encoding: the Encoding layer, (B, h, w, D) -> (B, K, D) residual encodings (with scale_drop: EncDrop).
    flattened to (B, K * D) code by code, L2-normalised.
    fc: Linear K * D -> C with bias, sigmoid -> gamma (B, C).
  Output: x * gamma, gamma broadcast over space (no residual inside: the block adds its shortcut after it).

  Attributes:
    num_codes: K.
    reduction: C / D.
    scale_drop: EncDrop (layers.encoding.Encoding.scale_drop).
    dtype: compute dtype of the conv and the output; the encoding and the gate run in float32.
  """
  num_codes: int = 32
  reduction: int = 4
  scale_drop: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """(B, h, w, C) -> (B, h, w, C) in `dtype`."""
    channels = x.shape[-1]
    width = channels // self.reduction
    projected = ConvBNReLU(width, 1, use_bias=True, dtype=self.dtype, name='project',
                           **conv_init('pytorch', channels, 1))(x, train=train)
    codes = Encoding(self.num_codes, scale_drop=self.scale_drop, dtype=self.dtype, name='encoding')(
        projected, train=train)
    flat = codes.reshape(codes.shape[0], -1)
    flat = flat / jnp.maximum(jnp.linalg.norm(flat, axis=-1, keepdims=True), _NORMALIZE_EPS)
    gamma = nn.sigmoid(torch_linear(channels, flat.shape[-1], name='fc')(flat))
    return x.astype(self.dtype) * gamma.astype(self.dtype)[:, None, None, :]


class EncBasicBlock(nn.Module):
  """PyTorch-Encoding's EncBasicBlock: conv3x3 (stride) -> BN -> ReLU -> conv3x3 -> BN -> the gate, plus the
  shortcut (identity, or a 1x1 conv with bias and the stride where the shape changes, without BN), then ReLU.
  Without a gate: the plain basic block of the same network.

  Attributes:
    planes: output channels.
    stride: stride of conv1 and of the shortcut projection.
    gate: builds the block's Context Encoding Module (an EncodingGate with its settings, called with its name), or
      None for none.
    dtype: compute dtype.
  """
  planes: int
  stride: int = 1
  gate: Callable[..., nn.Module] | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """(B, H, W, C) -> (B, H / stride, W / stride, planes)."""
    in_channels = x.shape[-1]
    conv_bn = functools.partial(ConvBNReLU, self.planes, 3, kernel_init=TORCH_DEFAULT_KERNEL, dtype=self.dtype)
    y = conv_bn(stride=self.stride, name='conv1')(x, train=train)
    y = conv_bn(activate=False, name='conv2')(y, train=train)
    if self.gate is not None:
      y = self.gate(name='gate')(y, train=train)
    shortcut = x
    if self.stride != 1 or in_channels != self.planes:
      shortcut = conv2d(self.planes, 1, stride=self.stride, use_bias=True, dtype=self.dtype, name='shortcut',
                        **conv_init('pytorch', in_channels, 1))(x)
    return nn.relu(y + shortcut.astype(y.dtype))


class CifarResNet(nn.Module):
  """The CIFAR network's body: stem and three stages of `blocks` EncBasicBlocks, widths w, 2w, 4w.

  Attributes:
    base_width: w, the width of the stem and the first stage (PyTorch-Encoding: 16 x --widen).
    blocks: basic blocks per stage (2: the 14-layer network).
    num_codes: codewords of every block's Context Encoding Module (--ncodes); 0 leaves the modules out.
    reduction: a module encodes C / reduction channels.
    scale_drop: EncDrop in every Encoding layer (PyTorch-Encoding's encnetdrop model).
    dtype: compute dtype; parameters are float32.
    remat: in training, rematerialise every block (layers.remat).
  """
  base_width: int = 128
  blocks: int = 2
  num_codes: int = 32
  reduction: int = 4
  scale_drop: bool = True
  dtype: Dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
    """(B, H, W, 3) normalised images -> three stage outputs (B, H / s, W / s, w * s) for s = 1, 2, 4."""
    x = ConvBNReLU(self.base_width, 3, use_bias=True, dtype=self.dtype, name='stem',
                   **conv_init('pytorch', x.shape[-1], 3))(x, train=train)
    gate = (functools.partial(EncodingGate, self.num_codes, self.reduction, self.scale_drop, dtype=self.dtype)
            if self.num_codes else None)
    block_cls = block_type(EncBasicBlock, self.remat and train)
    outputs = []
    for stage, stride in enumerate(STRIDES):
      for index in range(self.blocks):
        x = block_cls(self.base_width * 2**stage, stride=stride if index == 0 else 1, gate=gate, dtype=self.dtype,
                      name=f'layer{stage + 1}_{index}')(x, train)
      outputs.append(x)
    return outputs


SETTINGS = {
    'base_width': Setting(128, 'width of the stem and the first stage; the stages are w, 2w, 4w (PyTorch-Encoding: '
                          '16 x --widen, 128 for the 3.45% network)', rule=settings.POSITIVE),
    'blocks': Setting(2, 'basic blocks per stage (2: the 14-layer network)', rule=settings.POSITIVE),
    'num_codes': Setting(32, 'codewords of the Context Encoding Module in every block (--ncodes); 0 leaves the '
                         'modules out', rule=settings.NON_NEGATIVE),
    'reduction': Setting(4, 'a module encodes channels / reduction features', rule=settings.POSITIVE),
    'scale_drop': Setting(True, 'EncDrop: smoothing factors drawn from U(-1, 0) every training step, -0.5 at '
                          'inference (PyTorch-Encoding encnetdrop); False learns them'),
}


def build(config, *, dtype: Dtype, remat: bool = False) -> CifarResNet:
  """The CIFAR network body of a backbone config (SETTINGS' keys); `remat`: config.model.remat."""
  return CifarResNet(base_width=config.base_width, blocks=config.blocks, num_codes=config.num_codes,
                     reduction=config.reduction, scale_drop=config.scale_drop, dtype=dtype, remat=remat)


COMPONENT = settings.Component(build, SETTINGS, outputs=('stage1', 'stage2', 'stage3'),
                               doc="EncNet's CIFAR network body (PyTorch-Encoding encnet/encnetdrop)")
