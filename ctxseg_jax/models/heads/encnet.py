"""EncNet's head (Zhang et al., CVPR 2018): Context Encoding Module, SE branch, optional lateral connections.

Follows mmseg `EncHead`/`EncModule` (parameter names are mmseg's where mmseg names the layer) and
PyTorch-Encoding's `EncHead`; the two differ only in the options exposed here (lateral connections, dropout
flavour). Both compute the EncModule as in the paper: projection, Encoding layer, BatchNorm1d over
the codes, mean over codes, sigmoid gate; the SE branch reads the pre-gate encoding.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctxseg_jax import settings
from ctxseg_jax.models.heads.base import HeadType
from ctxseg_jax.models.heads.fcn import DROPOUT_SETTINGS, classifier_dropout, conv_seg
from ctxseg_jax.models.layers.conv import ConvBNReLU, batch_norm
from ctxseg_jax.models.layers.encoding import Encoding
from ctxseg_jax.models.layers.linear import torch_linear
from ctxseg_jax.models.layers.valid_region import ValidRegion, mask_of, resize_within
from ctxseg_jax.settings import Setting

Dtype = Any


class EncModule(nn.Module):
  """Context Encoding Module: a global encoding of the feature map gates its channels.

  Layers (C = input channels, K = num_codes):
    encoding_project: 1x1 conv C -> C (no bias), BN, ReLU.
    encoding: the Encoding layer, (B, h, w, C) -> (B, K, C) residual encodings, float32.
    encoding_norm: BatchNorm over the code axis (K features, statistics over the batch and the C channels;
      PyTorch BatchNorm1d(K) on a (B, K, C) tensor), then ReLU and the mean over codes -> `encoded` (B, C).
    fc: Linear C -> C with bias, sigmoid -> gamma (B, C).
  Output: ReLU(x + x * gamma), gamma broadcast over space.

  Attributes:
    num_codes: K.
    dtype: compute dtype of the convolution and the output; the code statistics and the gate stay float32.
  """
  num_codes: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               valid: ValidRegion | None = None) -> tuple[jax.Array, jax.Array]:
    """(B, h, w, C) -> (encoded float32 (B, C), gated features (B, h, w, C) in `dtype`); with `valid`, the
    encoding aggregates each image's own region only."""
    channels = x.shape[-1]
    projected = ConvBNReLU(channels, 1, dtype=self.dtype, name='encoding_project')(x, train=train)
    codes = Encoding(num_codes=self.num_codes, dtype=self.dtype, name='encoding')(projected, mask_of(valid, x))
    codes = batch_norm(train=train, axis=1, name='encoding_norm')(codes.astype(jnp.float32))
    encoded = jnp.mean(nn.relu(codes), axis=1)
    gamma = nn.sigmoid(torch_linear(channels, channels, name='fc')(encoded))
    x = x.astype(self.dtype)
    return encoded, nn.relu(x + x * gamma.astype(self.dtype)[:, None, None, :])


class EncHead(nn.Module):
  """mmseg EncHead: bottleneck, optional lateral fusion, EncModule, dropout, 1x1 classifier, SE branch.

  Layers (C = channels):
    bottleneck: 3x3 ConvBNReLU on the last input -> C.
    lateral (optional): 1x1 ConvBNReLU -> C on each earlier input (stages 2 and 3), resized bilinearly
      (align_corners False) to the bottleneck's size; `fusion` 3x3 ConvBNReLU on concat [bottleneck, laterals].
    enc_module: EncModule (above).
    dropout, conv_seg: as FCNHead (1x1 conv with bias, N(0, 0.01)).
    se_layer: Linear C -> num_classes on the EncModule's `encoded` vector. It only feeds the SE-loss, so it runs
      (and owns parameters) only when `train` is True: an eval-mode init holds the inference model alone.

  Attributes:
    num_classes: number of classes.
    channels: C, the width of every hidden layer (512 in mmseg and PyTorch-Encoding).
    num_codes: codewords of the Encoding layer.
    lateral: fuse the earlier inputs (mmseg add_lateral; PyTorch-Encoding turns it on for PASCAL datasets).
    se_head: build the SE branch.
    dropout: dropout rate before the classifier; 0 disables it.
    dropout_mode: 'channel' (Dropout2d, mmseg) or 'element' (Dropout, PyTorch-Encoding).
    dtype: compute dtype.
  """
  num_classes: int
  channels: int = 512
  num_codes: int = 32
  lateral: bool = False
  se_head: bool = True
  dropout: float = 0.1
  dropout_mode: str = 'channel'
  dtype: Dtype = jnp.float32

  takes_valid_region: ClassVar[bool] = True

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], *, train: bool,
               valid: ValidRegion | None = None) -> dict[str, jax.Array]:
    """Backbone stages [(B, h2, w2, C2), (B, h3, w3, C3), (B, h, w, C4)] -> named float32 outputs.

    Returns {'logits': (B, h, w, num_classes)}, plus 'se_logits' (B, num_classes) when `train` and se_head.
    Without `lateral`, only the last input is read. `valid`: each image's region of a padded input, the only
    positions the Encoding layer aggregates and the lateral resizes resize (layers.valid_region).
    """
    if isinstance(features, jax.Array):
      features = [features]
    *earlier, last = features
    if self.lateral and len(earlier) != 2:
      raise ValueError(f'EncHead with lateral connections reads three backbone stages (reads=(1, 2, 3)); '
                       f'got {len(features)} inputs')
    feat = ConvBNReLU(self.channels, 3, dtype=self.dtype, name='bottleneck')(last, train=train)
    if self.lateral:
      laterals = [
          resize_within(ConvBNReLU(self.channels, 1, dtype=self.dtype, name=f'lateral_convs_{i}')(x, train=train),
                        feat.shape[1:3], valid, align_corners=False)
          for i, x in enumerate(earlier)
      ]
      feat = ConvBNReLU(self.channels, 3, dtype=self.dtype, name='fusion')(
          jnp.concatenate([feat, *laterals], axis=-1), train=train)
    encoded, feat = EncModule(self.num_codes, dtype=self.dtype, name='enc_module')(feat, train=train, valid=valid)
    dropout = classifier_dropout(self.dropout, self.dropout_mode, train=train)
    if dropout is not None:
      feat = dropout(feat)
    outputs = {'logits': conv_seg(self.num_classes, feat.shape[-1], dtype=self.dtype)(feat).astype(jnp.float32)}
    if train and self.se_head:
      outputs['se_logits'] = torch_linear(self.num_classes, encoded.shape[-1], name='se_layer')(encoded)
    return outputs


SETTINGS = {
    'channels': Setting(512, 'width of every hidden layer', rule=settings.POSITIVE),
    'num_codes': Setting(32, 'K codewords of the Encoding layer', rule=settings.POSITIVE),
    'lateral': Setting(False, 'lateral connections from the earlier inputs (mmseg: off; PyTorch-Encoding: on for '
                       'PASCAL datasets); the head then reads three stages, e.g. reads=(1, 2, 3)'),
    'se_head': Setting(True, 'the training-only SE branch (Linear -> classes) that the SE-loss trains'),
    **DROPOUT_SETTINGS,
}


def build(config, *, num_classes: int, dtype: Dtype) -> EncHead:
  """The EncHead of a head config (SETTINGS' keys)."""
  return EncHead(num_classes=num_classes, channels=config.channels, num_codes=config.num_codes,
                 lateral=config.lateral, se_head=config.se_head, dropout=config.dropout,
                 dropout_mode=config.dropout_mode, dtype=dtype)


def _present(config, train: bool) -> tuple[str, ...]:
  return ('logits', 'se_logits') if train and config.se_head else ('logits',)


def _feature_counts(config) -> tuple[int, ...] | None:
  return (3,) if config.lateral else None  # without laterals only the last input is read


COMPONENT = HeadType(build, SETTINGS, outputs=('logits', 'se_logits'), present=_present,
                     feature_counts=_feature_counts, doc='EncNet head: Context Encoding Module + SE branch')
