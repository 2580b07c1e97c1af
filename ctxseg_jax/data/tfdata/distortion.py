"""Photometric distortion in graph: mmseg's PhotoMetricDistortion with the exact integer/float32 formulas of
`photometric.py` (OpenCV's 8-bit HSV conversions), so that the same draws give the same pixels."""
from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from ctxseg_jax.data import photometric
from ctxseg_jax.data.tfdata import draws

_SHIFT, _HALF = 12, 1 << 11


def _reciprocals(numerator: int) -> np.ndarray:
  table = np.zeros(256, np.int32)
  table[1:] = np.rint(numerator / np.arange(1, 256, dtype=np.float64))
  return table


# S by V * 256 + (V - min): (d * round(255 * 4096 / V) + 2048) >> 12, at most 255.
_S_TABLE = np.minimum((np.arange(256, dtype=np.int32)[None, :] * _reciprocals(255 << _SHIFT)[:, None] + _HALF)
                      >> _SHIFT, 255).astype(np.int32).reshape(-1)
_H_RECIPROCAL = _reciprocals((180 << _SHIFT) // 6)


def _rgb_to_hsv(r: tf.Tensor, g: tf.Tensor, b: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """int32 R, G, B -> int32 H (0..179), S, V: OpenCV's 8-bit conversion."""
  v = tf.maximum(tf.maximum(r, g), b)
  d = v - tf.minimum(tf.minimum(r, g), b)
  s = tf.gather(tf.constant(_S_TABLE), v * 256 + d)
  n = tf.where(tf.equal(v, r), g - b, tf.where(tf.equal(v, g), b - r + 2 * d, r - g + 4 * d))
  h = tf.bitwise.right_shift(n * tf.gather(tf.constant(_H_RECIPROCAL), d) + _HALF, _SHIFT)
  return tf.math.floormod(h, 180), s, v


def _hsv_to_rgb(h: tf.Tensor, s: tf.Tensor, v: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """int32 H, S, V -> int32 R, G, B: OpenCV's 8-bit conversion in float32, each channel truncated.

  s = S / 255 and v = V / 255 (times the float32 reciprocal); the hue h = H * 6 / 180 lies in sector
  k = floor(h) with fractional part f. Each channel takes the maximum V (trunc(v * 255) = V for every V), the
  minimum v (1 - s) or the middle value v (1 - s w), w = f in odd sectors and 1 - f in even ones: the maximum
  is channel ((k + 1) mod 6) // 2 and the middle value channel (1 - k) mod 3 (R, G, B = 0, 1, 2), which is the
  sector table of the standard hexcone model.
  """
  f32 = lambda x: tf.constant(x, tf.float32)
  inverse, one, full = f32(np.float32(1.0) / np.float32(255.0)), f32(1.0), f32(255.0)
  s_f, v_f = tf.cast(s, tf.float32) * inverse, tf.cast(v, tf.float32) * inverse
  hue = tf.cast(h, tf.float32) * f32(np.float32(6.0) / np.float32(180.0))
  whole = tf.floor(hue)
  sector = tf.cast(whole - f32(6.0) * tf.floor(whole * (one / f32(6.0))), tf.int32)
  frac = hue - whole
  weight = tf.where(tf.equal(sector % 2, 1), frac, one - frac)
  maximum, minimum = v, tf.cast(v_f * (one - s_f) * full, tf.int32)
  middle = tf.cast((one - s_f * weight) * v_f * full, tf.int32)
  max_channel, middle_channel = tf.math.floormod(sector + 1, 6) // 2, tf.math.floormod(1 - sector, 3)
  return tuple(tf.where(tf.equal(max_channel, c), maximum, tf.where(tf.equal(middle_channel, c), middle, minimum))
               for c in range(3))


def _convert(x: tf.Tensor, alpha, beta) -> tf.Tensor:
  """mmseg's `convert` on int32 values 0..255: clip(float32(x) * alpha + beta, 0, 255), truncated."""
  values = tf.cast(x, tf.float32) * tf.cast(alpha, tf.float32) + tf.cast(beta, tf.float32)
  return tf.cast(tf.clip_by_value(values, 0.0, 255.0), tf.int32)


def _through_hsv(planes: list[tf.Tensor], channel: int, fn: Callable[[tf.Tensor], tf.Tensor]) -> list[tf.Tensor]:
  hsv = list(_rgb_to_hsv(*planes))
  hsv[channel] = fn(hsv[channel])
  return list(_hsv_to_rgb(*hsv))


def _distort(image: tf.Tensor, brightness_on, brightness, contrast_first, contrast_on, contrast, saturation_on,
             saturation, hue_on, hue) -> tf.Tensor:
  """mmseg's step order: brightness, contrast (mode 1), saturation, hue, contrast (mode 0); each HSV step makes its
  own round trip. Arguments are scalar tensors (bools, float32 strengths, the int32 hue shift)."""
  planes = [tf.cast(plane, tf.int32) for plane in tf.unstack(image, axis=-1)]
  step = lambda on, fn, planes: tf.cond(on, lambda: fn(planes), lambda: planes)
  affine = lambda alpha, beta: lambda planes: [_convert(p, alpha, beta) for p in planes]
  planes = step(brightness_on, affine(1.0, brightness), planes)
  planes = step(tf.logical_and(contrast_on, contrast_first), affine(contrast, 0.0), planes)
  planes = step(saturation_on, lambda planes: _through_hsv(planes, 1, lambda s: _convert(s, saturation, 0.0)),
                planes)
  planes = step(hue_on, lambda planes: _through_hsv(planes, 0, lambda h: tf.math.floormod(h + hue, 180)), planes)
  planes = step(tf.logical_and(contrast_on, tf.logical_not(contrast_first)), affine(contrast, 0.0), planes)
  return tf.transpose(tf.stack([tf.cast(p, tf.uint8) for p in planes]), [1, 2, 0])


def distort(image: tf.Tensor, params: photometric.DistortionParams) -> tf.Tensor:
  """Applies one draw of photometric.PhotoMetricDistortion (None = step skipped) in graph.

  Bit-identical to `photometric.apply_distortion(image, params)`.

  Args:
    image: uint8 (H, W, 3) RGB.
  Returns:
    uint8 (H, W, 3).
  """
  on = lambda value: tf.constant(value is not None)
  value = lambda v, default=0.0: tf.constant(default if v is None else v, tf.float32)
  return _distort(tf.convert_to_tensor(image, tf.uint8), on(params.brightness), value(params.brightness),
                  tf.constant(params.contrast_first), on(params.contrast), value(params.contrast, 1.0),
                  on(params.saturation), value(params.saturation, 1.0), on(params.hue),
                  tf.constant(params.hue or 0, tf.int32))


def random_distort(image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
  """PhotoMetricDistortion with its defaults: brightness +-32, contrast and saturation 0.5..1.5, hue +-18 (of
  0..179, drawn from [-18, 17] like numpy's randint), each with probability 0.5."""
  p = photometric.PhotoMetricDistortion()
  return _distort(
      image, draws.coin(key, draws.BRIGHTNESS_ON),
      draws.uniform(key, draws.BRIGHTNESS, -p.brightness_delta, p.brightness_delta),
      draws.coin(key, draws.CONTRAST_FIRST), draws.coin(key, draws.CONTRAST_ON),
      draws.uniform(key, draws.CONTRAST, *p.contrast_range), draws.coin(key, draws.SATURATION_ON),
      draws.uniform(key, draws.SATURATION, *p.saturation_range), draws.coin(key, draws.HUE_ON),
      draws.uniform(key, draws.HUE, -p.hue_delta, p.hue_delta, tf.int32))
