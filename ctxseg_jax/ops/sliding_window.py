"""Sliding-window placement and accumulation with static shapes: every image of a batch gets the same number of
windows (the most any image of the canvas can need), each with a per-image origin and a validity flag.

Placements (per axis, for an image of `size` pixels, windows of `crop`, step `stride`):
  'shift' (mmseg slide_inference, HRNet): n = max(size - crop + stride - 1, 0) // stride + 1 windows at
    i * stride, the last ones shifted back to end at the image border: origin_i = max(min(i * stride + crop, size)
    - crop, 0). An image smaller than the crop gets one window at 0 (mmseg runs a smaller window there; here the
    window also covers padding).
  'pad' (PyTorch-Encoding MultiEvalModule): the image is padded to at least the crop, n = ceil((max(size, crop) -
    crop) / stride) + 1 windows at i * stride; a window reaching past the image covers padding.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

PLACEMENTS = ('shift', 'pad')


def window_count(size: int, crop: int, stride: int, placement: str) -> int:
  """Windows along an axis of `size` pixels (a Python int: the static count for a canvas of that size)."""
  if placement == 'shift':
    return max(size - crop + stride - 1, 0) // stride + 1
  if placement == 'pad':
    return math.ceil((max(size, crop) - crop) / stride) + 1
  raise ValueError(f'window placement {placement!r} is not supported; choose one of {list(PLACEMENTS)}')


def extent(canvas: int, crop: int, stride: int, placement: str) -> int:
  """The static length every window of a `canvas`-long axis fits in."""
  if placement == 'shift':
    return max(canvas, crop)
  return (window_count(canvas, crop, stride, placement) - 1) * stride + crop


def origins(sizes: jax.Array, count: int, crop: int, stride: int, placement: str) -> tuple[jax.Array, jax.Array]:
  """Per image, the origins of `count` windows along one axis and whether each is one of the image's own.

  Args:
    sizes: int (B,) each image's size along the axis.
    count: the static number of windows (window_count of the canvas).
  Returns:
    origins int32 (B, count), valid bool (B, count).
  """
  sizes = sizes.astype(jnp.int32)[:, None]
  steps = jnp.arange(count, dtype=jnp.int32)[None] * stride
  if placement == 'shift':
    own = jnp.maximum(sizes - crop + stride - 1, 0) // stride + 1
    starts = jnp.maximum(jnp.minimum(steps + crop, jnp.maximum(sizes, crop)) - crop, 0)
  else:
    own = -(-(jnp.maximum(sizes, crop) - crop) // stride) + 1
    starts = jnp.broadcast_to(steps, (sizes.shape[0], count))
  return starts, jnp.arange(count)[None] < own


def flip_regions(x: jax.Array, widths: jax.Array) -> jax.Array:
  """Mirrors the first widths[b] columns of each image x[b] (B, H, W, C); columns beyond stay in place."""
  columns = jnp.arange(x.shape[2])[None]
  widths = widths.astype(jnp.int32)[:, None]
  source = jnp.where(columns < widths, widths - 1 - columns, columns)  # (B, W)
  return jnp.take_along_axis(x, source[:, None, :, None], axis=2)


def gather_windows(images: jax.Array, starts: jax.Array, crop: tuple[int, int]) -> jax.Array:
  """(B, H, W, C) images and int (B, N, 2) window origins -> (B, N, crop_h, crop_w, C) windows."""
  def one_image(image, image_starts):
    return jax.vmap(lambda s: jax.lax.dynamic_slice(image, (s[0], s[1], 0), (*crop, image.shape[-1])))(image_starts)
  return jax.vmap(one_image)(images, starts)


def add_windows(total: jax.Array, windows: jax.Array, starts: jax.Array, weights: jax.Array) -> jax.Array:
  """total (B, H, W, C) plus each image's windows (B, k, h, w, C), times their weights (B, k), at their origins
  (B, k, 2)."""
  def one_image(acc, image_windows, image_starts, image_weights):
    def add_one(i, acc):
      start = (image_starts[i, 0], image_starts[i, 1], 0)
      patch = jax.lax.dynamic_slice(acc, start, image_windows.shape[1:])
      return jax.lax.dynamic_update_slice(acc, patch + image_weights[i] * image_windows[i], start)
    return jax.lax.fori_loop(0, image_windows.shape[0], add_one, acc)
  return jax.vmap(one_image)(total, windows, starts, weights.astype(total.dtype))


def grid(sizes: jax.Array, canvas: tuple[int, int], crop: tuple[int, int], stride: tuple[int, int],
         placement: str) -> tuple[jax.Array, jax.Array]:
  """Every window of every image: origins int32 (B, N, 2) and valid bool (B, N), N = the canvas's row count x
  column count, row-major."""
  per_axis = [origins(sizes[:, axis], window_count(canvas[axis], crop[axis], stride[axis], placement), crop[axis],
                      stride[axis], placement) for axis in (0, 1)]
  (rows, rows_valid), (cols, cols_valid) = per_axis
  batch, n_rows, n_cols = rows.shape[0], rows.shape[1], cols.shape[1]
  starts = jnp.stack([jnp.broadcast_to(rows[:, :, None], (batch, n_rows, n_cols)),
                      jnp.broadcast_to(cols[:, None, :], (batch, n_rows, n_cols))], axis=-1)
  valid = rows_valid[:, :, None] & cols_valid[:, None, :]
  return starts.reshape(batch, n_rows * n_cols, 2), valid.reshape(batch, n_rows * n_cols)
