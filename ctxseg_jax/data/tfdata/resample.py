"""Resampling in graph, which differs from the grain (PIL) path:

  * images: bilinear with half-pixel centres and no antialiasing, rounded to uint8: the output of
    tf.image.resize(antialias=False), which is OpenCV's INTER_LINEAR (mmseg) up to OpenCV's fixed-point weights.
    Only the crop window is computed. PIL's BILINEAR widens its filter when downscaling (antialiasing), so grain's
    downscaled images are smoother; upscaled ones agree up to rounding (PIL works in fixed point).
  * labels: nearest with half-pixel centres, src = floor((dst + 0.5) * in / out), as PIL's NEAREST and
    tf.image.resize; OpenCV's INTER_NEAREST (mmseg) takes floor(dst * in / out), up to one source pixel apart.
  * eval images (eval_scale) are resized with tf.image.resize (bilinear, antialias=False), OpenCV-like likewise.
"""
from __future__ import annotations

import tensorflow as tf

from ctxseg_jax.data import transforms


def _half_pixel(out_index: tf.Tensor, in_size: tf.Tensor, out_size: tf.Tensor) -> tf.Tensor:
  """float32 source coordinates (out + 0.5) * in / out, as TensorFlow's resize kernels compute them."""
  scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
  return (tf.cast(out_index, tf.float32) + 0.5) * scale


def _nearest_indices(out_index, in_size, out_size):
  return tf.minimum(tf.cast(tf.floor(_half_pixel(out_index, in_size, out_size)), tf.int32), in_size - 1)


def _linear_indices(out_index, in_size, out_size):
  """(lower, upper, weight of upper) source indices of bilinear half-pixel resampling."""
  position = _half_pixel(out_index, in_size, out_size) - 0.5
  floor = tf.floor(position)
  lower = tf.maximum(tf.cast(floor, tf.int32), 0)
  upper = tf.minimum(tf.cast(tf.math.ceil(position), tf.int32), in_size - 1)
  return lower, upper, position - floor


def resize_window(image: tf.Tensor, label: tf.Tensor, size: tf.Tensor, top: tf.Tensor, left: tf.Tensor,
                  crop: tuple[int, int], image_pad_value) -> tuple[tf.Tensor, tf.Tensor]:
  """The crop window [top, top + crop_h) x [left, left + crop_w) of the image and label resized to `size` and
  padded bottom/right (image: image_pad_value, one int or one per channel; label: IGNORE), computed without
  resizing anything outside the window.

  Equal to resizing the whole image with tf.image.resize (bilinear, half-pixel centres, antialias=False; the label
  nearest), rounding to uint8, padding, then cropping.

  Args:
    image: uint8 (H, W, 3); label: uint8 (H, W).
    size: int32 (2,), the resized (height, width).
    top, left: int32 scalars, the window's corner in the padded resized image.
    crop: static (crop_h, crop_w).
  Returns:
    image uint8 (crop_h, crop_w, 3), label uint8 (crop_h, crop_w).
  """
  in_h, in_w = tf.shape(label)[0], tf.shape(label)[1]
  rows, cols = top + tf.range(crop[0]), left + tf.range(crop[1])
  inside = tf.logical_and((rows < size[0])[:, None], (cols < size[1])[None, :])
  rows, cols = tf.minimum(rows, size[0] - 1), tf.minimum(cols, size[1] - 1)
  y0, y1, wy = _linear_indices(rows, in_h, size[0])
  x0, x1, wx = _linear_indices(cols, in_w, size[1])
  # Only the source rectangle the window reads is used (the indices grow with rows and cols). Interpolating
  # along x first, then along y, gives TensorFlow's values: top = tl + (tr - tl) wx, the same for the bottom
  # row, then top + (bottom - top) wy.
  region = image[y0[0]:y1[-1] + 1, x0[0]:x1[-1] + 1]
  y0, y1, x0, x1 = y0 - y0[0], y1 - y0[0], x0 - x0[0], x1 - x0[0]
  left_values = tf.cast(tf.gather(region, x0, axis=1), tf.float32)
  along_x = left_values + (tf.cast(tf.gather(region, x1, axis=1), tf.float32) - left_values) * wx[None, :, None]
  upper = tf.gather(along_x, y0)
  pixels = tf.cast(tf.round(upper + (tf.gather(along_x, y1) - upper) * wy[:, None, None]), tf.uint8)
  image = tf.cond(tf.reduce_all(inside), lambda: pixels,
                  lambda: tf.where(inside[..., None], pixels, tf.constant(image_pad_value, tf.uint8)))
  return image, label_window(label, size, top, left, crop)


def label_window(label: tf.Tensor, size: tf.Tensor, top: tf.Tensor, left: tf.Tensor,
                  crop: tuple[int, int]) -> tf.Tensor:
  """The label half of `resize_window`: uint8 (crop_h, crop_w), nearest, padded with IGNORE."""
  in_h, in_w = tf.shape(label)[0], tf.shape(label)[1]
  rows, cols = top + tf.range(crop[0]), left + tf.range(crop[1])
  inside = tf.logical_and((rows < size[0])[:, None], (cols < size[1])[None, :])
  rows = _nearest_indices(tf.minimum(rows, size[0] - 1), in_h, size[0])
  cols = _nearest_indices(tf.minimum(cols, size[1] - 1), in_w, size[1])
  return tf.where(inside, tf.gather(tf.gather(label, rows), cols, axis=1), tf.constant(transforms.IGNORE, tf.uint8))


def resize_image(image: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
  """uint8 (H, W, 3) -> uint8 (h, w, 3), bilinear (tf.image.resize, antialias=False), rounded."""
  same = tf.reduce_all(tf.equal(tf.shape(image)[:2], size))

  def resized():
    pixels = tf.image.resize(image, size, method='bilinear', antialias=False)
    return tf.cast(tf.round(tf.clip_by_value(pixels, 0.0, 255.0)), tf.uint8)

  return tf.cond(same, lambda: image, resized)
