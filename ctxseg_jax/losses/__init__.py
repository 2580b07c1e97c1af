"""Losses over a model's named outputs: each term picks the outputs it needs (DESIGN.md principle 2)."""
from __future__ import annotations

import jax
import ml_collections

from ctxseg_jax.losses.cross_entropy import pixel_cross_entropy
from ctxseg_jax.losses.se_loss import se_loss
from ctxseg_jax.models.layers.resize import resize_bilinear


def segmentation_loss(outputs: dict[str, jax.Array], labels: jax.Array, loss_config: ml_collections.ConfigDict,
                      ignore_index: int) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total training loss and its weighted terms.

  Args:
    outputs: the model's named outputs; 'logits' (B, h, w, K) and optionally 'aux_logits', at feature resolution.
      They are resized bilinearly (align_corners False) to the label size before the loss, as mmseg does.
      Optionally 'se_logits' (B, K), EncNet's per-image class presence logits.
    labels: int (B, H, W).
    loss_config: config.loss (ce_reduction, aux_weight, se_weight).
  Returns:
    (total, terms) where terms maps 'loss_ce', 'loss_aux', 'loss_se' to their weighted values; a term is present
    only when its output exists and its weight is positive ('loss_ce' always).
  """
  size = labels.shape[1:3]

  def ce(logits):
    return pixel_cross_entropy(resize_bilinear(logits, size), labels, ignore_index, loss_config.ce_reduction)

  terms = {'loss_ce': ce(outputs['logits'])}
  if 'aux_logits' in outputs and loss_config.aux_weight > 0:
    terms['loss_aux'] = loss_config.aux_weight * ce(outputs['aux_logits'])
  if 'se_logits' in outputs and loss_config.se_weight > 0:
    terms['loss_se'] = loss_config.se_weight * se_loss(outputs['se_logits'], labels, ignore_index)
  return sum(terms.values()), terms
