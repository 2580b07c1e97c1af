"""Where each image lies inside a padded batch, at any feature resolution, and pooling restricted to it.

Evaluation batches hold images of different sizes, each at the top-left of a shared canvas, the rest padding.
A network run on the image alone at its own size would never see that padding. Convolutions only see it near
the image's bottom and right borders, but global pooling (EncNet's Encoding layer, ASPP's image pooling, OCR's
soft region gather) would average over all of it; restricted to the image's region, pooling gives what the image
alone gives. `valid_size` is the image's (h, w) in input pixels.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def valid_positions(valid_size: jax.Array, input_shape: tuple[int, int],
                    feature_shape: tuple[int, int]) -> jax.Array:
  """bool (B, h, w): the positions of a (h, w) = feature_shape map, computed from an (H, W) = input_shape input,
  that belong to each image's top-left valid_size (int (B, 2)) region.

  A map at stride s = H / h covers ceil(v / s) positions of an image of v pixels: what the references' stride-2
  layers give (ResNet's and HRNet's 3x3 stride-2 convolutions with padding 1, the max pool, the 1x1 stride-2
  shortcut: each maps n to ceil(n / 2)), exactly when H and W are multiples of s.
  """
  extents = []
  for axis in (0, 1):
    size, full = feature_shape[axis], input_shape[axis]
    extents.append((valid_size[:, axis] * size + full - 1) // full)  # ceil(v * h / H), in integers
  rows = jnp.arange(feature_shape[0])[None, :] < extents[0][:, None]
  cols = jnp.arange(feature_shape[1])[None, :] < extents[1][:, None]
  return rows[:, :, None] & cols[:, None, :]


def masked_mean(x: jax.Array, mask: jax.Array | None) -> jax.Array:
  """float32 (B, 1, 1, C): the mean of (B, h, w, C) `x` over the positions where bool (B, h, w) `mask` holds
  (all positions when it is None)."""
  x = x.astype(jnp.float32)
  if mask is None:
    return jnp.mean(x, axis=(1, 2), keepdims=True)
  weights = mask[..., None].astype(jnp.float32)
  total = jnp.sum(x * weights, axis=(1, 2), keepdims=True)
  return total / jnp.maximum(jnp.sum(weights, axis=(1, 2), keepdims=True), 1.0)


class ValidRegion(NamedTuple):
  """Each image's region inside a padded input: size int (B, 2), the (h, w) at the top-left of an input of
  input_shape (H, W)."""
  size: jax.Array
  input_shape: tuple[int, int]

  def mask(self, x: jax.Array) -> jax.Array:
    """bool (B, h, w): valid_positions at the resolution of (B, h, w, C) `x`."""
    return valid_positions(self.size, self.input_shape, x.shape[1:3])


def mask_of(valid: ValidRegion | None, x: jax.Array) -> jax.Array | None:
  """valid.mask(x), or None without a region (every position counts)."""
  return None if valid is None else valid.mask(x)
