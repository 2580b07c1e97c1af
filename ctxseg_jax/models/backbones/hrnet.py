"""HRNetV2 (Wang et al., TPAMI 2020): parallel high-to-low resolution branches with repeated multi-scale fusion.

Follows HRNet-Semantic-Segmentation's `HighResolutionNet` (branch HRNet-OCR) and mmseg's `HRNet`, which share
the topology of the W18/W32/W48 models:
  stem: two 3x3 stride-2 convs to 64 channels (BN, ReLU each); output stride 4.
  stage 1: 4 Bottleneck blocks of 64 planes (256 channels).
  transition i: a 3x3 conv (BN, ReLU) where a kept branch changes width; a new, lower branch is a 3x3 stride-2
    conv from the lowest existing branch.
  stages 2-4: 1, 4 and 3 modules of 2, 3 and 4 branches of widths (W, 2W, 4W, 8W), each branch 4 BasicBlocks,
    then fusion: branch i receives every branch j, through a 1x1 conv + BN and a bilinear upsample when j is
    lower (j > i), through i - j 3x3 stride-2 convs + BN (ReLU between them) when j is higher, summed, ReLU.
Outputs: the four branches of the last module, strides (4, 8, 16, 32), widths (W, 2W, 4W, 8W). HRNetV2's
representation head concatenates them at stride 4 (a head with reads=(0, 1, 2, 3), input_transform
'resize_concat').

Parameter names follow the reference modules' structure (`stage3_2/branch1_0/conv1` for
`stage3.2.branches.1.0.conv1`, `stage3_2/fuse0_1` for `fuse_layers[0][1]`), for weight import.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctxseg_jax import settings
from ctxseg_jax.models.backbones.resnet import BasicBlock, Bottleneck
from ctxseg_jax.models.layers.conv import KAIMING_FAN_OUT, ConvBNReLU, Initializer
from ctxseg_jax.models.layers.resize import resize_bilinear
from ctxseg_jax.settings import Setting

Dtype = Any

STEM_WIDTH = 64
STAGE1_BLOCKS = 4
# Stages 2-4: (modules, branches); every branch has 4 BasicBlocks in every HRNetV2 W18/W32/W48.
STAGES = ((1, 2), (4, 3), (3, 4))
BLOCKS_PER_BRANCH = 4
# HRNet-Semantic-Segmentation's init_weights: every backbone conv N(0, 0.001) (BN: scale 1, bias 0).
HRNET_INIT = nn.initializers.normal(0.001)
INITS = {'hrnet': HRNET_INIT, 'kaiming': KAIMING_FAN_OUT}


class FusionModule(nn.Module):
  """One HighResolutionModule: BasicBlocks on each branch, then every branch fused into every branch.

  Attributes:
    widths: channels of each branch, highest resolution first.
    align_corners: corner convention of the upsampling of lower branches (HRNet-OCR: True; mmseg: False).
    kernel_init: conv kernel initialiser.
    dtype: compute dtype.
  """
  widths: tuple[int, ...]
  align_corners: bool = True
  kernel_init: Initializer = HRNET_INIT
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, branches: Sequence[jax.Array], *, train: bool) -> list[jax.Array]:
    """Branches [(B, H / 2**i, W / 2**i, widths[i])] -> fused branches of the same shapes."""
    outs = []
    for i, (x, width) in enumerate(zip(branches, self.widths)):
      for b in range(BLOCKS_PER_BRANCH):
        x = BasicBlock(width, kernel_init=self.kernel_init, dtype=self.dtype, name=f'branch{i}_{b}')(x, train=train)
      outs.append(x)
    fused = []
    for i, target in enumerate(outs):
      total = target
      for j, source in enumerate(outs):
        if j > i:
          y = ConvBNReLU(self.widths[i], 1, activate=False, kernel_init=self.kernel_init, dtype=self.dtype,
                         name=f'fuse{i}_{j}')(source, train=train)
          total = total + resize_bilinear(y, target.shape[1:3], align_corners=self.align_corners)
        elif j < i:
          y = source
          for k in range(i - j):
            last = k == i - j - 1
            y = ConvBNReLU(self.widths[i] if last else self.widths[j], 3, stride=2, activate=not last,
                           kernel_init=self.kernel_init, dtype=self.dtype, name=f'fuse{i}_{j}_{k}')(y, train=train)
          total = total + y
      fused.append(nn.relu(total))
    return fused


class HRNet(nn.Module):
  """HRNetV2-W`width` returning the four branches of its last module (see the module docstring).

  Attributes:
    width: W, the width of the highest-resolution branch (18, 32 or 48).
    align_corners: corner convention of the fusion upsampling.
    weight_init: 'hrnet' (conv kernels N(0, 0.001), HRNet-Semantic-Segmentation) or 'kaiming' (fan-out, mmcv).
    dtype: compute dtype; parameters are float32.
  """
  width: int = 48
  align_corners: bool = True
  weight_init: str = 'hrnet'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
    """(B, H, W, 3) -> [(B, ceil(H / 4 / 2**i), ceil(W / 4 / 2**i), width * 2**i) for i in 0..3]."""
    kernel_init = INITS[self.weight_init]
    conv = lambda features, kernel, name, stride=1: ConvBNReLU(  # noqa: E731
        features, kernel, stride=stride, kernel_init=kernel_init, dtype=self.dtype, name=name)
    x = conv(STEM_WIDTH, 3, 'stem1', stride=2)(x, train=train)
    x = conv(STEM_WIDTH, 3, 'stem2', stride=2)(x, train=train)
    for b in range(STAGE1_BLOCKS):
      x = Bottleneck(STEM_WIDTH, kernel_init=kernel_init, dtype=self.dtype, name=f'layer1_{b}')(x, train=train)
    branches = [x]
    for stage, (num_modules, num_branches) in enumerate(STAGES, start=2):
      widths = tuple(self.width * 2**i for i in range(num_branches))
      new_branches = []
      for i, width in enumerate(widths):
        if i < len(branches):
          y = branches[i]
          if y.shape[-1] != width:
            y = conv(width, 3, f'transition{stage - 1}_{i}')(y, train=train)
        else:
          y = conv(width, 3, f'transition{stage - 1}_{i}', stride=2)(branches[-1], train=train)
        new_branches.append(y)
      branches = new_branches
      for m in range(num_modules):
        branches = FusionModule(widths, self.align_corners, kernel_init, dtype=self.dtype,
                                name=f'stage{stage}_{m}')(branches, train=train)
    return branches


SETTINGS = {
    'width': Setting(48, 'W, the width of the highest-resolution branch: HRNetV2-W18, -W32 or -W48',
                     choices=(18, 32, 48)),
    'align_corners': Setting(True, 'corner convention of the fusion upsampling (HRNet-OCR: True; mmseg: False)'),
    'weight_init': Setting('hrnet', "conv kernels N(0, 0.001) ('hrnet', HRNet-Semantic-Segmentation) or Kaiming "
                           "fan-out ('kaiming', mmcv)", choices=tuple(INITS)),
}


def build(config, *, dtype: Dtype) -> HRNet:
  """The HRNetV2 of a backbone config (SETTINGS' keys)."""
  return HRNet(width=config.width, align_corners=config.align_corners, weight_init=config.weight_init, dtype=dtype)


COMPONENT = settings.Component(build, SETTINGS, outputs=('branch1', 'branch2', 'branch3', 'branch4'),
                               doc='HRNetV2 (HRNet-Semantic-Segmentation, mmseg HRNet)')
