"""DeepLabV3's head (Chen et al., 2017) in mmseg's form (ASPPHead): atrous spatial pyramid pooling.

Branches on the input x (B, h, w, C_in), each a ConvModule (conv, BN, ReLU) to `channels`:
  image_pool: global average pool, 1x1 conv, then broadcast back to (h, w) (mmseg resizes the 1x1 map
    bilinearly, which is a broadcast whatever the corner convention);
  aspp_i for each dilation d: a 1x1 conv for d = 1, else a 3x3 conv with dilation and padding d.
Then bottleneck: a 3x3 ConvModule on the concatenated branches ((1 + len(dilations)) x channels -> channels),
dropout, conv_seg: 1x1 conv -> K classes. Parameter names follow mmseg: image_pool, aspp_modules.i -> aspp_i,
bottleneck, conv_seg.
"""
from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctxseg_jax import settings
from ctxseg_jax.models.heads.base import HeadType
from ctxseg_jax.models.heads.fcn import DROPOUT_SETTINGS, INIT_SETTING, classify
from ctxseg_jax.models.layers.conv import ConvBNReLU, conv_init
from ctxseg_jax.models.layers.valid_region import ValidRegion, mask_of, masked_mean
from ctxseg_jax.settings import Setting

Dtype = Any


class ASPPHead(nn.Module):
  """mmseg's ASPPHead (see the module docstring).

  Attributes:
    num_classes: K.
    channels: width of every branch and of the bottleneck (mmseg 512).
    dilations: one branch per dilation; 1 is a 1x1 conv (mmseg (1, 12, 24, 36) at output stride 8).
    dropout, dropout_mode: before the classifier (mmseg Dropout2d 0.1).
    weight_init: initialisation of the convs, 'mmcv' or 'pytorch' (see layers.conv.conv_init).
    dtype: compute dtype.
  """
  num_classes: int
  channels: int = 512
  dilations: tuple[int, ...] = (1, 12, 24, 36)
  dropout: float = 0.1
  dropout_mode: str = 'channel'
  weight_init: str = 'mmcv'
  dtype: Dtype = jnp.float32

  takes_valid_region: ClassVar[bool] = True

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, valid: ValidRegion | None = None) -> jax.Array:
    """(B, h, w, C_in) features -> (B, h, w, num_classes) float32 logits; with `valid` (each image's region of a
    padded input, layers.valid_region), the image pooling averages that region only."""
    batch, height, width, in_channels = x.shape
    pooled = masked_mean(x, mask_of(valid, x)).astype(self.dtype)
    pooled = ConvBNReLU(self.channels, 1, dtype=self.dtype, name='image_pool',
                        **conv_init(self.weight_init, in_channels, 1))(pooled, train=train)
    branches = [jnp.broadcast_to(pooled, (batch, height, width, self.channels))]
    for i, dilation in enumerate(self.dilations):
      kernel = 1 if dilation == 1 else 3
      branches.append(ConvBNReLU(self.channels, kernel, dilation=dilation, dtype=self.dtype, name=f'aspp_{i}',
                                 **conv_init(self.weight_init, in_channels, kernel))(x, train=train))
    y = jnp.concatenate(branches, axis=-1)
    y = ConvBNReLU(self.channels, 3, dtype=self.dtype, name='bottleneck',
                   **conv_init(self.weight_init, y.shape[-1], 3))(y, train=train)
    return classify(y, self.num_classes, dropout=self.dropout, dropout_mode=self.dropout_mode,
                    weight_init=self.weight_init, dtype=self.dtype, train=train)


SETTINGS = {
    'channels': Setting(512, 'width of every branch and of the bottleneck', rule=settings.POSITIVE),
    'dilations': Setting((1, 12, 24, 36), 'one branch per dilation, 1 being a 1x1 conv (mmseg at output stride 8; '
                         '(1, 6, 12, 18) at 16)', rule=settings.INT_TUPLE),
    **DROPOUT_SETTINGS,
    'weight_init': INIT_SETTING,
}


def build(config, *, num_classes: int, dtype: Dtype) -> ASPPHead:
  """The ASPPHead of a head config (SETTINGS' keys)."""
  return ASPPHead(num_classes=num_classes, channels=config.channels, dilations=tuple(config.dilations),
                  dropout=config.dropout, dropout_mode=config.dropout_mode, weight_init=config.weight_init,
                  dtype=dtype)


COMPONENT = HeadType(build, SETTINGS, outputs=('logits',), doc="DeepLabV3's ASPP head (mmseg ASPPHead)")
