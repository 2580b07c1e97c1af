"""Bilinear resizing with PyTorch `F.interpolate(mode='bilinear')` semantics for NHWC arrays.

Both corner conventions are supported, because the references disagree:
mmseg and PaddleSeg use `align_corners=False`, HRNet-OCR, PyTorch-Encoding and ContrastiveSeg use `True`.

The resize is separable, so each spatial axis is resampled by a dense (out, in) interpolation matrix built on
the host with PyTorch's index formulas and applied as a matmul. Matrices are small (at most a few MB for
Cityscapes-sized outputs) and matmuls map well onto accelerators, unlike per-pixel gathers.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def linear_taps(in_size: int, out_size: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The 1-D linear interpolation taps of each output index: (lo, hi, frac), each of shape (out_size,).

  Output i is (1 - frac[i]) * x[lo[i]] + frac[i] * x[hi[i]]. Source coordinates follow PyTorch's
  upsample_bilinear2d for an explicit output size, computed in float32 as PyTorch does for float inputs:
    align_corners=False: src = max(0, (dst + 0.5) * in / out - 0.5)   (no antialiasing when downsampling)
    align_corners=True:  src = dst * (in - 1) / (out - 1)             (0 when out == 1)
  lo = floor(src) and hi = lo + 1, both clamped to the last input index; frac = src - lo (float32).
  """
  if in_size < 1 or out_size < 1:
    raise ValueError(f'sizes must be positive, got in_size={in_size}, out_size={out_size}')
  dst = np.arange(out_size, dtype=np.float32)
  if align_corners:
    scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0)
    src = dst * scale
  else:
    scale = np.float32(in_size / out_size)
    src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
  lo = np.minimum(src.astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  return lo, hi, (src - lo.astype(np.float32)).astype(np.float32)


@functools.lru_cache(maxsize=256)
def interpolation_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
  """Returns the (out_size, in_size) float32 matrix of 1-D linear interpolation weights (see `linear_taps`).

  Each row holds weight (1 - frac) at lo and frac at hi (their sum, 1, where the two coincide at the last index).
  """
  lo, hi, frac = linear_taps(in_size, out_size, align_corners)
  matrix = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, lo), np.float32(1) - frac)
  np.add.at(matrix, (rows, hi), frac)
  return matrix


def _resample_axis(x: jax.Array, axis: int, out_size: int, align_corners: bool) -> jax.Array:
  """Resamples one spatial axis (1 = H, 2 = W) of an NHWC array to `out_size`."""
  in_size = x.shape[axis]
  if in_size == out_size:  # both conventions reduce to the identity
    return x
  matrix = jnp.asarray(interpolation_matrix(in_size, out_size, align_corners), dtype=x.dtype)
  spec = 'oh,bhwc->bowc' if axis == 1 else 'ow,bhwc->bhoc'
  # HIGHEST keeps float32 matmuls exact on accelerators that would otherwise round operands to bf16/TF32.
  return jnp.einsum(spec, matrix, x, precision=jax.lax.Precision.HIGHEST)


def resize_bilinear(x: jax.Array, size: Sequence[int], align_corners: bool = False) -> jax.Array:
  """Bilinearly resizes NHWC `x` to spatial `size`, like PyTorch `F.interpolate(x, size, mode='bilinear')`.

  Args:
    x: (B, H, W, C) floating array.
    size: (out_H, out_W).
    align_corners: PyTorch's flag; False is the half-pixel convention (equal to
      `jax.image.resize(..., 'linear', antialias=False)`), True maps corner pixels onto corner pixels.

  Returns:
    (B, out_H, out_W, C) array with the dtype of `x`. Low-precision inputs are interpolated in float32.
  """
  if x.ndim != 4:
    raise ValueError(f'resize_bilinear expects a (B, H, W, C) array, got shape {x.shape}')
  out_h, out_w = (int(s) for s in size)
  dtype = x.dtype
  y = x.astype(jnp.promote_types(dtype, jnp.float32))
  # Resample the axis that shrinks the intermediate the most first.
  if out_h * x.shape[2] <= x.shape[1] * out_w:
    y = _resample_axis(_resample_axis(y, 1, out_h, align_corners), 2, out_w, align_corners)
  else:
    y = _resample_axis(_resample_axis(y, 2, out_w, align_corners), 1, out_h, align_corners)
  return y.astype(dtype)


def resize_nearest(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Nearest-neighbour resize of the two axes after the first, as PyTorch `F.interpolate(mode='nearest')` indexes:
  output i reads input min(floor(i * s), in - 1) with s = in / out rounded to float32 (so 26 -> 22 reads 12 at
  output 11 where exact arithmetic would give 13).

  Args:
    x: (B, H, W, ...) array of any dtype (label maps, class indices).
    size: (out_H, out_W).
  Returns:
    (B, out_H, out_W, ...) array of x's dtype.
  """
  rows, cols = (_nearest_sources(x.shape[axis], int(out)) for axis, out in ((1, size[0]), (2, size[1])))
  return x[:, rows][:, :, cols]


def _nearest_sources(in_size: int, out_size: int) -> np.ndarray:
  """PyTorch's nearest_idx: the identity for equal sizes, else min(floor(i * float32(in / out)), in - 1)."""
  if in_size == out_size:
    return np.arange(out_size)
  scale = np.float32(in_size) / np.float32(out_size)
  return np.minimum(np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64), in_size - 1)


def _dynamic_taps(in_size: jax.Array, out_size: jax.Array, out_len: int,
                  align_corners: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The two source indices and the weight of the second for each of out_len outputs, mapping [0, in_size) onto
  [0, out_size) (the formulas of `linear_taps`, for traced sizes).

  Outputs at or beyond out_size are padding: their taps are whatever the formula gives, always inside [0, in_size).
  """
  dst = jnp.arange(out_len, dtype=jnp.float32)
  if align_corners:
    scale = jnp.where(out_size > 1, (in_size - 1).astype(jnp.float32) / jnp.maximum(out_size - 1, 1), 0.0)
    src = dst * scale
  else:
    scale = in_size.astype(jnp.float32) / out_size.astype(jnp.float32)
    src = jnp.maximum((dst + 0.5) * scale - 0.5, 0.0)
  lo = jnp.minimum(src.astype(jnp.int32), in_size - 1)
  hi = jnp.minimum(lo + 1, in_size - 1)
  return lo, hi, src - lo.astype(jnp.float32)


def _resize_region(x: jax.Array, in_size: jax.Array, out_size: jax.Array, out_shape: tuple[int, int],
                   align_corners: bool) -> jax.Array:
  """One (H, W, C) image: x[:in_h, :in_w] resized to (out_h, out_w) at the top-left of an out_shape canvas."""
  rows_lo, rows_hi, rows_frac = _dynamic_taps(in_size[0], out_size[0], out_shape[0], align_corners)
  y = x[rows_lo] * (1 - rows_frac)[:, None, None] + x[rows_hi] * rows_frac[:, None, None]
  cols_lo, cols_hi, cols_frac = _dynamic_taps(in_size[1], out_size[1], out_shape[1], align_corners)
  return y[:, cols_lo] * (1 - cols_frac)[None, :, None] + y[:, cols_hi] * cols_frac[None, :, None]


def resize_bilinear_regions(x: jax.Array, in_sizes: jax.Array, out_sizes: jax.Array, out_shape: Sequence[int],
                            align_corners: bool = False) -> jax.Array:
  """Resizes the top-left region of each image to a per-image size, with PyTorch's bilinear semantics.

  For image b, the region x[b, :in_h, :in_w] is resized to (out_h, out_w) like F.interpolate of the cropped
  region would, and placed at the top-left of a (out_H, out_W) canvas (the rest holds padding values). This is
  how a prediction made on a resized, padded eval image is brought back to its original, padded label. Each
  output mixes two gathered rows, then two gathered columns (no dense interpolation matrices: the sizes are
  traced, and eval canvases are large).

  Args:
    x: (B, H, W, C) floating array.
    in_sizes: int (B, 2) region sizes (in_h, in_w) inside (H, W).
    out_sizes: int (B, 2) target sizes (out_h, out_w) inside (out_H, out_W).
    out_shape: static (out_H, out_W).
    align_corners: PyTorch's corner convention (see `linear_taps`).
  Returns:
    (B, out_H, out_W, C) float32 array.
  """
  shape = tuple(int(s) for s in out_shape)
  return jax.vmap(lambda image, i, o: _resize_region(image, i, o, shape, align_corners))(
      x.astype(jnp.float32), in_sizes, out_sizes)
