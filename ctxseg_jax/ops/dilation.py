"""Euclidean dilation of boolean maps by a small radius, on device: which pixels lie within a distance of a set.

`within_distance(mask, r)` equals scipy.ndimage.distance_transform_edt(~mask) <= r on every map (an exact test in
integers). It costs O(r) shifts per axis, however far the rest of the map is from the set, where a full distance
transform costs as many shifts as the largest distance (boundary trimaps: r up to a few tens of pixels on maps of
a few thousand).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _shift(x: jax.Array, offset: int, axis: int, fill) -> jax.Array:
  """x moved by `offset` along `axis` (out[i] = x[i + offset]), `fill` where that falls outside."""
  if offset == 0:
    return x
  size = x.shape[axis]
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, offset) if offset > 0 else (-offset, 0)
  padded = jnp.pad(x, pad, constant_values=fill)
  start = max(offset, 0)
  return jax.lax.slice_in_dim(padded, start, start + size, axis=axis)


def within_distance(mask: jax.Array, radius: int) -> jax.Array:
  """bool (..., H, W): True where the Euclidean distance to the nearest True pixel of `mask`'s map is <= radius.

  Separable: g = the vertical distance to the nearest True pixel of the column (capped at radius + 1), then
  D^2 = min over |t| <= radius of t^2 + g(column j + t)^2, compared with radius^2 in int32.
  """
  mask = jnp.asarray(mask, bool)
  far = radius + 1
  vertical = jnp.where(mask, 0, far).astype(jnp.int32)
  for s in range(1, radius + 1):
    for offset in (s, -s):
      vertical = jnp.minimum(vertical, jnp.where(_shift(mask, offset, -2, False), s, far))
  squared = vertical * vertical
  best = squared
  for t in range(1, radius + 1):
    for offset in (t, -t):
      best = jnp.minimum(best, t * t + _shift(squared, offset, -1, far * far))
  return best <= radius * radius
