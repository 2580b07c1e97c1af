"""HRNetV2 (Wang et al., TPAMI 2020): parallel high-to-low resolution branches with repeated multi-scale fusion.

Follows HRNet-Semantic-Segmentation's `HighResolutionNet` (branch HRNet-OCR) and mmseg's `HRNet`, which share
the topology of the W18/W32/W48 models ('full'; 'small' is HRNetV2-W18-Small-v2's, in the brackets):
  stem: two 3x3 stride-2 convs to 64 channels (BN, ReLU each); output stride 4.
  stage 1: 4 [2] Bottleneck blocks of 64 planes (256 channels).
  transition i: a 3x3 conv (BN, ReLU) where a kept branch changes width; a new, lower branch is a 3x3 stride-2
    conv from the lowest existing branch.
  stages 2-4: 1, 4 and 3 [1, 3 and 2] modules of 2, 3 and 4 branches of widths (W, 2W, 4W, 8W), each branch 4 [2]
    BasicBlocks,
    then fusion: branch i receives every branch j, through a 1x1 conv + BN and a bilinear upsample when j is
    lower (j > i), through i - j 3x3 stride-2 convs + BN (ReLU between them) when j is higher, summed, ReLU.
Outputs: the four branches of the last module, strides (4, 8, 16, 32), widths (W, 2W, 4W, 8W). HRNetV2's
representation head concatenates them at stride 4 (a head with reads=(0, 1, 2, 3), input_transform
'resize_concat').

Parameter names follow the reference modules' structure (`stage3_2/branch1_0/conv1` for
`stage3.2.branches.1.0.conv1`, `stage3_2/fuse0_1` for `fuse_layers[0][1]`), for weight import.
"""
from __future__ import annotations

from typing import Any, ClassVar, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctxseg_jax import settings
from ctxseg_jax.models.backbones.resnet import BasicBlock, Bottleneck
from ctxseg_jax.models.layers.conv import KAIMING_FAN_OUT, ConvBNReLU, Initializer
from ctxseg_jax.models.layers.remat import block_type
from ctxseg_jax.models.layers.valid_region import ValidRegion, resize_within
from ctxseg_jax.settings import Setting

Dtype = Any

STEM_WIDTH = 64


class Depth(NamedTuple):
  """How deep each stage is: stage 1's Bottlenecks, then stages 2-4 as (modules, branches, BasicBlocks per branch)."""
  stage1_blocks: int
  stages: tuple[tuple[int, int, int], ...]


DEPTHS = {
    'full': Depth(4, ((1, 2, 4), (4, 3, 4), (3, 4, 4))),  # HRNetV2-W18/W32/W48
    'small': Depth(2, ((1, 2, 2), (3, 3, 2), (2, 4, 2))),  # HRNetV2-W18-Small-v2 (mmseg hr18s)
}
# HRNet-Semantic-Segmentation's init_weights: every backbone conv N(0, 0.001) (BN: scale 1, bias 0).
HRNET_INIT = nn.initializers.normal(0.001)
INITS = {'hrnet': HRNET_INIT, 'kaiming': KAIMING_FAN_OUT}


class FusionModule(nn.Module):
  """One HighResolutionModule: BasicBlocks on each branch, then every branch fused into every branch.

  Attributes:
    widths: channels of each branch, highest resolution first.
    num_blocks: BasicBlocks on each branch before the fusion.
    align_corners: corner convention of the upsampling of lower branches (HRNet-OCR: True; mmseg: False).
    kernel_init: conv kernel initialiser.
    dtype: compute dtype.
  """
  widths: tuple[int, ...]
  num_blocks: int = 4
  align_corners: bool = True
  kernel_init: Initializer = HRNET_INIT
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, branches: Sequence[jax.Array], train: bool,
               valid: ValidRegion | None = None) -> list[jax.Array]:
    """Branches [(B, H / 2**i, W / 2**i, widths[i])] -> fused branches of the same shapes; with `valid`, lower
    branches are upsampled within each image's region (layers.valid_region)."""
    outs = []
    for i, (x, width) in enumerate(zip(branches, self.widths)):
      for b in range(self.num_blocks):
        x = BasicBlock(width, kernel_init=self.kernel_init, dtype=self.dtype, name=f'branch{i}_{b}')(x, train=train)
      outs.append(x)
    fused = []
    for i, target in enumerate(outs):
      total = target
      for j, source in enumerate(outs):
        if j > i:
          y = ConvBNReLU(self.widths[i], 1, activate=False, kernel_init=self.kernel_init, dtype=self.dtype,
                         name=f'fuse{i}_{j}')(source, train=train)
          total = total + resize_within(y, target.shape[1:3], valid, self.align_corners)
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
    width: W, the width of the highest-resolution branch (18, 32 or 48 in the published models).
    depth: a key of DEPTHS: 'full' (W18/W32/W48) or 'small' (W18-Small-v2).
    align_corners: corner convention of the fusion upsampling.
    weight_init: 'hrnet' (conv kernels N(0, 0.001), HRNet-Semantic-Segmentation) or 'kaiming' (fan-out, mmcv).
    dtype: compute dtype; parameters are float32.
    remat: in training, rematerialise every stem and transition conv, stage-1 Bottleneck and fusion module
      (layers.remat).
  """
  width: int = 48
  depth: str = 'full'
  align_corners: bool = True
  weight_init: str = 'hrnet'
  dtype: Dtype = jnp.float32
  remat: bool = False

  takes_valid_region: ClassVar[bool] = True

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, valid: ValidRegion | None = None) -> list[jax.Array]:
    """(B, H, W, 3) -> [(B, ceil(H / 4 / 2**i), ceil(W / 4 / 2**i), width * 2**i) for i in 0..3]; `valid`: see
    FusionModule."""
    kernel_init = INITS[self.weight_init]
    remat = self.remat and train  # nothing to save for a backward pass otherwise
    conv_type, bottleneck_type, fusion_type = (block_type(t, remat) for t in (ConvBNReLU, Bottleneck, FusionModule))
    conv = lambda features, kernel, name, stride=1: conv_type(  # noqa: E731
        features, kernel, stride=stride, kernel_init=kernel_init, dtype=self.dtype, name=name)
    x = conv(STEM_WIDTH, 3, 'stem1', stride=2)(x, train)
    x = conv(STEM_WIDTH, 3, 'stem2', stride=2)(x, train)
    depth = DEPTHS[self.depth]
    for b in range(depth.stage1_blocks):
      x = bottleneck_type(STEM_WIDTH, kernel_init=kernel_init, dtype=self.dtype, name=f'layer1_{b}')(x, train)
    branches = [x]
    for stage, (num_modules, num_branches, num_blocks) in enumerate(depth.stages, start=2):
      widths = tuple(self.width * 2**i for i in range(num_branches))
      new_branches = []
      for i, width in enumerate(widths):
        if i < len(branches):
          y = branches[i]
          if y.shape[-1] != width:
            y = conv(width, 3, f'transition{stage - 1}_{i}')(y, train)
        else:
          y = conv(width, 3, f'transition{stage - 1}_{i}', stride=2)(branches[-1], train)
        new_branches.append(y)
      branches = new_branches
      for m in range(num_modules):
        branches = fusion_type(widths, num_blocks, self.align_corners, kernel_init, dtype=self.dtype,
                               name=f'stage{stage}_{m}')(branches, train, valid=valid)
    return branches


SETTINGS = {
    'width': Setting(48, 'W, the width of the highest-resolution branch (published: 18, 32, 48)',
                     rule=settings.POSITIVE),
    'depth': Setting('full', "modules and blocks per stage: 'full' (HRNetV2-W18/W32/W48) or 'small' "
                     "(HRNetV2-W18-Small-v2)", choices=tuple(DEPTHS)),
    'align_corners': Setting(True, 'corner convention of the fusion upsampling (HRNet-OCR: True; mmseg: False)'),
    'weight_init': Setting('hrnet', "conv kernels N(0, 0.001) ('hrnet', HRNet-Semantic-Segmentation) or Kaiming "
                           "fan-out ('kaiming', mmcv)", choices=tuple(INITS)),
}


def build(config, *, dtype: Dtype, remat: bool = False) -> HRNet:
  """The HRNetV2 of a backbone config (SETTINGS' keys); `remat`: config.model.remat."""
  return HRNet(width=config.width, depth=config.depth, align_corners=config.align_corners,
               weight_init=config.weight_init, dtype=dtype, remat=remat)


COMPONENT = settings.Component(build, SETTINGS, outputs=('branch1', 'branch2', 'branch3', 'branch4'),
                               doc='HRNetV2 (HRNet-Semantic-Segmentation, mmseg HRNet)')
