"""Where each image lies inside a padded batch, at any feature resolution, and the network run as on it alone.

Evaluation batches hold images of different sizes, each at the top-left of a shared canvas, the rest padding.
A network run on the image alone at its own size never sees that padding: its convolutions and max pools see
zero (or -inf) padding past the image's border, and its global pooling (EncNet's Encoding layer, ASPP's image
pooling, OCR's soft region gather) averages the image's own positions. Here:
- `zero_padding`: zeros the padding of the input of every operation that looks at neighbours (convolutions with
  a kernel larger than 1x1, max pools), so each sees at the border what the image alone sees. Convolutions
  start at the top-left, so a canvas whose sides are multiples of the network's stride keeps every valid
  position where the image alone has it; a max pool after a ReLU sees zeros where it would see -inf, and every
  window holds a valid, non-negative value, so the maximum is the same.
- modules that pool over positions pool over `ValidRegion.mask` only, and those that resize a map inside the
  network (HRNet's fusion, the heads' concatenation of resized stages, EncNet's lateral connections) resize
  each image's region of it to its region of the target (`resize_within`), with the scale the image alone has.
Each image of a padded batch then gets its own logits, to float rounding, when the canvas sides are multiples of
the network's largest stride. `valid_size` is the image's (h, w) in input pixels; a module that takes a
ValidRegion declares `takes_valid_region = True`.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctxseg_jax.models.layers.conv import MaxPool
from ctxseg_jax.models.layers.resize import resize_bilinear, resize_bilinear_regions


def valid_positions(valid_size: jax.Array, input_shape: tuple[int, int],
                    feature_shape: tuple[int, int]) -> jax.Array:
  """bool (B, h, w): the positions of a (h, w) = feature_shape map, computed from an (H, W) = input_shape input,
  that belong to each image's top-left valid_size (int (B, 2)) region.

  A map at stride s = H / h covers ceil(v / s) positions of an image of v pixels: what the references' stride-2
  layers give (ResNet's and HRNet's 3x3 stride-2 convolutions with padding 1, the max pool, the 1x1 stride-2
  shortcut: each maps n to ceil(n / 2)), exactly when H and W are multiples of s.
  """
  extents = valid_extent(valid_size, input_shape, feature_shape)
  rows = jnp.arange(feature_shape[0])[None, :] < extents[:, :1]
  cols = jnp.arange(feature_shape[1])[None, :] < extents[:, 1:]
  return rows[:, :, None] & cols[:, None, :]


def valid_extent(valid_size: jax.Array, input_shape: tuple[int, int], feature_shape: tuple[int, int]) -> jax.Array:
  """int (B, 2): the (h, w) each image's valid_size region covers in a map of feature_shape (valid_positions)."""
  full = jnp.asarray(input_shape)
  return (valid_size * jnp.asarray(feature_shape) + full - 1) // full  # ceil(v * h / H), in integers


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

  def extent(self, shape: tuple[int, int]) -> jax.Array:
    """int (B, 2): each image's (h, w) in a map of `shape` (valid_extent)."""
    return valid_extent(self.size, self.input_shape, shape)


def resize_within(x: jax.Array, shape: tuple[int, int], valid: ValidRegion | None,
                  align_corners: bool) -> jax.Array:
  """Bilinear resize of (B, h, w, C) `x` to (B, *shape, C) in x's dtype: the whole map, or with `valid` each image's
  region of x to its region at `shape`, as the image alone resizes its own map (the rest of the output is
  padding)."""
  if valid is None:
    return resize_bilinear(x, shape, align_corners)
  resized = resize_bilinear_regions(x, valid.extent(x.shape[1:3]), valid.extent(shape), shape, align_corners)
  return resized.astype(x.dtype)


def mask_of(valid: ValidRegion | None, x: jax.Array) -> jax.Array | None:
  """valid.mask(x), or None without a region (every position counts)."""
  return None if valid is None else valid.mask(x)


def looks_at_neighbours(module: nn.Module) -> bool:
  """Whether a module's output at a position depends on the input at other positions: a convolution with a
  kernel larger than 1x1, or a max pool."""
  if isinstance(module, nn.Conv):
    size = module.kernel_size
    return any(k > 1 for k in ((size,) if isinstance(size, int) else size))
  return isinstance(module, MaxPool)


def zero_padding(valid: ValidRegion) -> Callable:
  """A Flax method interceptor (nn.intercept_methods) that zeros the input of every module that looks at
  neighbours outside each image's region (see the module docstring)."""
  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and looks_at_neighbours(context.module):
      x = args[0]
      args = (jnp.where(valid.mask(x)[..., None], x, jnp.zeros((), x.dtype)), *args[1:])
    return next_fun(*args, **kwargs)
  return interceptor
