"""Backbone + decode head + optional auxiliary head -> a dict of named float32 outputs."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

InIndex = int | tuple[int, ...]


def select_features(features: Sequence[jax.Array], in_index: InIndex) -> jax.Array | list[jax.Array]:
  """mmseg `in_index`: one stage output for an int, a list of them for a tuple."""
  if isinstance(in_index, int):
    return features[in_index]
  return [features[i] for i in in_index]


class Segmentor(nn.Module):
  """Encoder-decoder segmentation model with named outputs.

  The decode head gets `select_features(stage_outputs, decode_in_index)` and returns either logits or a dict
  of named outputs that holds 'logits' (a head with extra outputs, such as EncNet's 'se_logits', returns a
  dict). The auxiliary head is training-only: it runs, and so owns parameters, only when `train` is True, so
  `init(..., train=False)` creates exactly the inference model.

  Outputs, all float32 whatever the compute dtype, at the resolution of the features they come from (callers
  resize to the label or image size):
    'logits': (B, h, w, K), always.
    'aux_logits': (B, h_a, w_a, K), only when `train` and an auxiliary head is configured.
    any further keys the decode head returns.

  Attributes:
    backbone: module mapping (B, H, W, 3) images to a list of stage outputs; called as backbone(x, train=...).
    decode_head: module called as decode_head(features, train=...).
    aux_head: optional training-only module called as aux_head(features, train=...) -> logits.
    decode_in_index: backbone outputs the decode head reads (mmseg `in_index`; 3 = last stage).
    aux_in_index: backbone outputs the auxiliary head reads (2 = stage 3).
  """
  backbone: nn.Module
  decode_head: nn.Module
  aux_head: nn.Module | None = None
  decode_in_index: InIndex = 3
  aux_in_index: InIndex = 2

  def __call__(self, images: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    """(B, H, W, 3) normalised float images -> dict of named float32 outputs (see the class docstring)."""
    features = self.backbone(images, train=train)
    decoded = self.decode_head(select_features(features, self.decode_in_index), train=train)
    outputs = dict(decoded) if isinstance(decoded, dict) else {'logits': decoded}
    if 'logits' not in outputs:
      raise ValueError(f'the decode head must return logits or a dict with a "logits" key; got {sorted(outputs)}')
    if train and self.aux_head is not None:
      outputs['aux_logits'] = self.aux_head(select_features(features, self.aux_in_index), train=train)
    return {name: value.astype(jnp.float32) for name, value in outputs.items()}
