"""OCRNet's head (Yuan et al., ECCV 2020): object-contextual representations, in HRNet-OCR's form.

Follows HRNet-Semantic-Segmentation (branch HRNet-OCR) `conv3x3_ocr`, `SpatialGather_Module`,
`SpatialOCR_Module` (scale 1) and `cls_head`:
  bottleneck: 3x3 conv in -> C (bias in HRNet-OCR, not in mmseg's ConvModule), BN, ReLU.
  gather: soft object regions = softmax over positions of the region logits (an earlier head's output, e.g.
    the auxiliary head's K-class logits) -> object representations (B, K, C), weighted means of the features.
  object_context: pixel-region relation softmax(f_pixel(x) f_object(r)^T / sqrt(C_key)) over the K regions,
    context = relation f_down(r), then f_up back to C (each f_* is 1x1 conv + BN + ReLU, f_pixel and f_object two
    of them); fuse: 1x1 conv on [context, x] (2C -> C), BN, ReLU, Dropout2d; conv_seg: 1x1 conv -> K classes.
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
from ctxseg_jax.models.layers.valid_region import ValidRegion, mask_of
from ctxseg_jax.settings import Setting

Dtype = Any


def gather_objects(features: jax.Array, region_logits: jax.Array, scale: float = 1.0,
                   mask: jax.Array | None = None) -> jax.Array:
  """Object representations: (B, h, w, C) features, (B, h, w, K) region logits -> float32 (B, K, C).

  Region k's representation is the mean of the features weighted by softmax over positions of scale * logits_k;
  with bool (B, h, w) `mask`, over those positions only.
  """
  batch, _, _, channels = features.shape
  logits = scale * region_logits.reshape(batch, -1, region_logits.shape[-1]).astype(jnp.float32)
  where = None if mask is None else mask.reshape(batch, -1, 1)
  weights = jax.nn.softmax(logits, axis=1, where=where)
  return jnp.einsum('bnk,bnc->bkc', weights, features.reshape(batch, -1, channels).astype(jnp.float32))


class ObjectContext(nn.Module):
  """The object attention block: each pixel attends over the K object representations.

  Attributes:
    key_channels: C_key of the query/key/value transforms (HRNet-OCR: 256).
    weight_init: initialisation of the convs, 'mmcv' or 'pytorch' (see layers.conv.conv_init).
    dtype: compute dtype; the relation softmax is float32.
  """
  key_channels: int = 256
  weight_init: str = 'mmcv'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, objects: jax.Array, *, train: bool) -> jax.Array:
    """(B, h, w, C) pixels, (B, K, C) objects -> (B, h, w, C) context."""
    batch, height, width, channels = x.shape
    regions = objects[:, :, None, :].astype(self.dtype)  # (B, K, 1, C): a 1x1 conv acts on each region
    transform = lambda name, y, out=self.key_channels: ConvBNReLU(  # noqa: E731
        out, 1, dtype=self.dtype, name=name, **conv_init(self.weight_init, y.shape[-1], 1))(y, train=train)
    query = transform('f_pixel_1', transform('f_pixel_0', x)).reshape(batch, -1, self.key_channels)
    key = transform('f_object_1', transform('f_object_0', regions)).reshape(batch, -1, self.key_channels)
    value = transform('f_down', regions).reshape(batch, -1, self.key_channels)
    relation = jnp.einsum('bnc,bkc->bnk', query.astype(jnp.float32), key.astype(jnp.float32))
    relation = jax.nn.softmax(relation * self.key_channels**-0.5, axis=-1)
    context = jnp.einsum('bnk,bkc->bnc', relation, value.astype(jnp.float32)).astype(self.dtype)
    return transform('f_up', context.reshape(batch, height, width, self.key_channels), channels)


class OCRHead(nn.Module):
  """HRNet-OCR's head (see the module docstring): features and region logits -> class logits.

  Attributes:
    num_classes: K.
    channels: C, the width of the object-contextual representation (HRNet-OCR MID_CHANNELS 512).
    key_channels: C_key (HRNet-OCR KEY_CHANNELS 256).
    bottleneck_bias: the 3x3 bottleneck conv has a bias (HRNet-OCR: True; mmseg: False).
    gather_scale: the scale of the region logits in the gather softmax (1).
    dropout, dropout_mode: before the classifier (HRNet-OCR: Dropout2d 0.05).
    weight_init: initialisation of the convs, 'mmcv' or 'pytorch' (HRNet-OCR; see layers.conv.conv_init).
    dtype: compute dtype.
  """
  num_classes: int
  channels: int = 512
  key_channels: int = 256
  bottleneck_bias: bool = True
  gather_scale: float = 1.0
  dropout: float = 0.05
  dropout_mode: str = 'channel'
  weight_init: str = 'mmcv'
  dtype: Dtype = jnp.float32

  takes_valid_region: ClassVar[bool] = True

  @nn.compact
  def __call__(self, x: jax.Array, region_logits: jax.Array, *, train: bool,
               valid: ValidRegion | None = None) -> jax.Array:
    """(B, h, w, C_in) features, (B, h, w, K) region logits -> (B, h, w, num_classes) float32 logits; with `valid`
    (each image's region of a padded input, layers.valid_region), objects are gathered from that region only."""
    x = ConvBNReLU(self.channels, 3, use_bias=self.bottleneck_bias, dtype=self.dtype, name='bottleneck',
                   **conv_init(self.weight_init, x.shape[-1], 3))(x, train=train)
    objects = gather_objects(x, region_logits, self.gather_scale, mask_of(valid, x))
    context = ObjectContext(self.key_channels, self.weight_init, dtype=self.dtype, name='object_context')(
        x, objects, train=train)
    y = jnp.concatenate([context, x], -1)
    y = ConvBNReLU(self.channels, 1, dtype=self.dtype, name='fuse', **conv_init(self.weight_init, y.shape[-1], 1))(
        y, train=train)
    return classify(y, self.num_classes, dropout=self.dropout, dropout_mode=self.dropout_mode,
                    weight_init=self.weight_init, dtype=self.dtype, train=train)


SETTINGS = {
    'channels': Setting(512, 'width of the object-contextual representation (HRNet-OCR MID_CHANNELS)',
                        rule=settings.POSITIVE),
    'key_channels': Setting(256, 'width of the query/key/value transforms (HRNet-OCR KEY_CHANNELS)',
                            rule=settings.POSITIVE),
    'bottleneck_bias': Setting(True, 'the 3x3 bottleneck conv has a bias (HRNet-OCR: True; mmseg: False)'),
    'gather_scale': Setting(1.0, 'scale of the region logits in the gather softmax', rule=settings.POSITIVE),
    **DROPOUT_SETTINGS,
    'dropout': Setting(0.05, 'Dropout2d rate before the classifier (HRNet-OCR 0.05)', rule=settings.UNIT_INTERVAL),
    'weight_init': INIT_SETTING,
}


def build(config, *, num_classes: int, dtype: Dtype) -> OCRHead:
  """The OCRHead of a head config (SETTINGS' keys)."""
  return OCRHead(num_classes=num_classes, channels=config.channels, key_channels=config.key_channels,
                 bottleneck_bias=config.bottleneck_bias, gather_scale=config.gather_scale, dropout=config.dropout,
                 dropout_mode=config.dropout_mode, weight_init=config.weight_init, dtype=dtype)


COMPONENT = HeadType(build, SETTINGS, outputs=('logits',), extra_inputs=1,
                     doc='OCRNet head: object-contextual representations over soft regions')
