"""The one path from images to class scores: the eval step, `--mode summary`'s FLOP count and Experiment.predict.

`predict_logits` normalises uint8 images, runs the inference model (training-only heads absent) and returns
logits at the input resolution, computed as `config.eval.mode` says. `logits_at_original_size` then takes each
image's region back to its original size, so scores and predictions are at the original resolution.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ctxseg_jax.models.layers.resize import resize_bilinear, resize_bilinear_regions
from ctxseg_jax.models.segmentor import Segmentor, classifier_input

MODES = ('whole',)  # 'whole': the whole (padded) image in one forward pass


def normalize(images: jax.Array, mean, std) -> jax.Array:
  """uint8 (B, H, W, 3) -> float32 (x - mean) / std."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) - mean) / std


def predict_logits(variables: dict, images: jax.Array, *, model: Segmentor,
                   config: ml_collections.ConfigDict) -> jax.Array:
  """uint8 (B, H, W, 3) images -> float32 logits (B, H, W, K) at input resolution, by config.eval.mode."""
  return predict_logits_and_features(variables, images, model=model, config=config, features=False)[0]


def predict_logits_and_features(variables: dict, images: jax.Array, *, model: Segmentor,
                                config: ml_collections.ConfigDict,
                                features: bool = True) -> tuple[jax.Array, jax.Array | None]:
  """`predict_logits`, and with `features` the whole images' features before the classifier, (B, h, w, C) at the
  head's stride (segmentor.classifier_input), else None."""
  if config.eval.mode not in MODES:
    raise ValueError(f'config.eval.mode={config.eval.mode!r} is not valid; choose one of {list(MODES)}')
  inputs = normalize(images, config.data.mean, config.data.std)
  if features:
    outputs, state = model.apply(variables, inputs, train=False, mutable=['intermediates'])
    recorded = classifier_input(model, state['intermediates'])
  else:
    outputs, recorded = model.apply(variables, inputs, train=False), None
  return resize_bilinear(outputs['logits'], images.shape[1:3]), recorded


def logits_at_original_size(logits: jax.Array, image_size: jax.Array, original_size: jax.Array,
                            out_shape: tuple[int, int], config: ml_collections.ConfigDict) -> jax.Array:
  """Each image's logits resized back to its original size.

  Args:
    logits: (B, H, W, K) at the (padded) input resolution.
    image_size: int (B, 2), the size of each image's region inside the input (after the eval resize).
    original_size: int (B, 2), each image's original size.
    out_shape: (Lh, Lw) >= every original size; the result is padded to it.
  Returns:
    (B, Lh, Lw, K): bilinear (align_corners False) from each region to its original size. Without an eval resize
    and with out_shape equal to the input shape, the logits are returned unchanged.
  """
  if any(config.data.eval_scale) or tuple(out_shape) != logits.shape[1:3]:
    return resize_bilinear_regions(logits, image_size, original_size, out_shape)
  return logits
