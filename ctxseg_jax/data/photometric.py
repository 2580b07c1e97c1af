"""mmsegmentation's `PhotoMetricDistortion` training augmentation on uint8 RGB images, in numpy.

Semantics follow mmseg 1.x (`mmseg/datasets/transforms/transforms.py`):

  1. brightness: with probability 0.5, x + beta, beta ~ U(-brightness_delta, brightness_delta);
  2. a fair coin (mmseg's `mode == 1`) puts contrast here: with probability 0.5, x * alpha, alpha ~ U(contrast_range);
  3. saturation: with probability 0.5, RGB -> HSV, S * alpha with alpha ~ U(saturation_range), HSV -> RGB;
  4. hue: with probability 0.5, RGB -> HSV, H + delta modulo 180 with delta an integer drawn like numpy's
     `randint(-hue_delta, hue_delta)` (so in [-hue_delta, hue_delta - 1]), HSV -> RGB;
  5. otherwise (`mode == 0`) contrast comes here, last.

Every affine step is mmseg's `convert`: float32 multiply-add, clip to [0, 255], cast to uint8 (truncation). Steps 3
and 4 each make their own HSV round trip, as mmseg does, so when both apply the image is converted twice.

The HSV conversions reproduce OpenCV's 8-bit `cvtColor` (which mmcv's `bgr2hsv` / `hsv2bgr` call) with H in [0, 180)
as degrees / 2 and S, V in [0, 255]. HSV is a function of the colour, not of the channel storage order, so reading
our RGB channels by name gives the same H, S, V that OpenCV computes from the same pixel stored as BGR.

RGB -> HSV (integer, exact): V = max(R, G, B), d = V - min(R, G, B). S = round(255 * d / V) and
H = round(30 * n / d) (+180 if negative), where n = G - B when V == R, B - R + 2d when V == G (and not R), else
R - G + 4d; both divisions are fixed point, a 12-bit reciprocal table rounded to the nearest integer, then
(x * table + 2048) >> 12. This can differ from exact rounding by one level for a few colours. Grey (d = 0) has
H = S = 0.

HSV -> RGB (float32, then truncation): s = S / 255, v = V / 255 (multiplication by the float32 reciprocal),
h = H * (6 / 180); the sector is floor(h) modulo 6 and f its fractional part. Each channel is one of v (the
maximum), v(1 - s) (the minimum) or the middle value v(1 - s f) in odd sectors, v(1 - s(1 - f)) in even ones,
assigned per sector as in the standard hexcone model; each is multiplied by 255 and truncated toward zero. This is
OpenCV's vectorised path, which handles all but a row's last (width mod 16, 32 or 64, by SIMD width) pixels,
where its scalar tail rounds instead; the match is to that path evaluated without fused multiply-adds (a build
that fuses 1 - s f could differ by one level on rare pixels). Float32 makes H = 90 and 150 land just past their
sector start, so e.g. HSV (90, 255, 255) gives RGB (0, 254, 255), as the same float32 arithmetic does in OpenCV.
"""
from __future__ import annotations

from collections.abc import Callable
import dataclasses

import numpy as np

_BLOCK = 1 << 16  # Pixels per block: the temporaries stay cache-resident, several times faster than whole images.
_SHIFT = 12
_HALF = 1 << (_SHIFT - 1)


def _fixed_reciprocal(numerator: int) -> np.ndarray:
  """int32 (256,): round(numerator / i) for i >= 1 (OpenCV's division tables; no ties occur), 0 at i = 0."""
  table = np.zeros(256, dtype=np.int32)
  table[1:] = np.rint(numerator / np.arange(1, 256, dtype=np.float64))
  return table


_H_RECIPROCAL = _fixed_reciprocal((180 << _SHIFT) // 6)
# S as a uint8 table over (V, V - min) = [V * 256 + d]; entries with d > V are never read.
_S_TABLE = ((np.arange(256, dtype=np.int32)[None, :] * _fixed_reciprocal(255 << _SHIFT)[:, None] + _HALF)
            >> _SHIFT).clip(0, 255).astype(np.uint8).reshape(-1)

_INV_255 = np.float32(1.0 / 255.0)
_F255 = np.float32(255.0)
_ONE = np.float32(1.0)


def _hue_tables() -> tuple[np.ndarray, np.ndarray]:
  """Per uint8 H: the hexcone sector (0..5) and the float32 weight w of the middle channel v(1 - s w)."""
  h = np.arange(256, dtype=np.float32) * (np.float32(6.0) / np.float32(180.0))
  whole = np.trunc(h)
  frac = h - whole
  sector = whole - np.float32(6.0) * np.trunc(whole * (np.float32(1.0) / np.float32(6.0)))
  sector = sector.astype(np.uint8)
  weight = np.where(sector % 2 == 1, frac, _ONE - frac).astype(np.float32)
  return sector, weight


_SECTOR, _MID_WEIGHT = _hue_tables()
_SCALED = np.arange(256, dtype=np.float32) * _INV_255  # S / 255 and V / 255 as OpenCV computes them.
_VMAX = (_SCALED * _F255).astype(np.uint8)  # trunc(v * 255) per V (the identity, kept for exactness).
_VMIN = (_SCALED[None, :] * (_ONE - _SCALED[:, None]) * _F255).astype(np.uint8).reshape(-1)  # [S * 256 + V].
# Which of (max, min, middle) = (0, 1, 2) each of R, G, B takes, per sector; as 0 / 255 masks per H for the
# max and the middle value (the min is the default).
_ROLES = np.array([[0, 2, 1], [2, 0, 1], [1, 0, 2], [1, 2, 0], [2, 1, 0], [0, 1, 2]])
_IS_MAX = tuple(np.where(_ROLES[_SECTOR, c] == 0, 255, 0).astype(np.uint8) for c in range(3))
_IS_MID = tuple(np.where(_ROLES[_SECTOR, c] == 2, 255, 0).astype(np.uint8) for c in range(3))

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]


def _check_image(image: np.ndarray) -> None:
  if image.dtype != np.uint8 or image.ndim < 1 or image.shape[-1] != 3:
    raise ValueError(f'Expected a uint8 array (..., 3), got {image.dtype} {image.shape}.')


def _select(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Branch-free mask ? a : b for all-ones / all-zeros integer masks (np.where is slow on random masks)."""
  return (a & mask) | (b & ~mask)


def _hsv_planes(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> Planes:
  """uint8 R, G, B planes (N,) -> uint8 H (0..179), S, V planes (N,)."""
  v = np.maximum(np.maximum(r, g), b)
  diff = v - np.minimum(np.minimum(r, g), b)
  s = np.take(_S_TABLE, (v.astype(np.uint16) << 8) | diff)
  r16, g16, b16, d16 = r.astype(np.int16), g.astype(np.int16), b.astype(np.int16), diff.astype(np.int16)
  at_r = -(v == r).astype(np.int16)
  at_g = -(v == g).astype(np.int16)
  n = _select(at_r, g16 - b16, _select(at_g, b16 - r16 + 2 * d16, r16 - g16 + 4 * d16)).astype(np.int32)
  n *= np.take(_H_RECIPROCAL, diff)
  n += _HALF
  n >>= _SHIFT
  n += (n >> 31) & 180
  return n.astype(np.uint8), s, v


def _rgb_planes(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> Planes:
  """uint8 H, S, V planes (N,) -> uint8 R, G, B planes (N,)."""
  bottom = np.take(_VMIN, (s.astype(np.uint16) << 8) | v)
  mid = np.take(_SCALED, s) * np.take(_MID_WEIGHT, h)
  np.subtract(_ONE, mid, out=mid)
  mid *= np.take(_SCALED, v)
  mid *= _F255
  # Each channel is bottom, top or mid: bottom ^ (top ^ bottom, masked) ^ (mid ^ bottom, masked), branch-free.
  top_xor = np.take(_VMAX, v) ^ bottom
  mid_xor = mid.astype(np.uint8) ^ bottom
  return tuple(bottom ^ (top_xor & np.take(_IS_MAX[c], h)) ^ (mid_xor & np.take(_IS_MID[c], h)) for c in range(3))


def _map_pixels(image: np.ndarray, fn: Callable[[np.ndarray, np.ndarray, np.ndarray], Planes]) -> np.ndarray:
  """Applies fn to the channel planes of image (..., 3), block by block; returns a new array."""
  flat = image.reshape(-1, 3)
  out = np.empty(flat.shape, dtype=np.uint8)
  for start in range(0, flat.shape[0], _BLOCK):
    block = flat[start:start + _BLOCK]
    for c, plane in enumerate(fn(block[:, 0], block[:, 1], block[:, 2])):
      out[start:start + _BLOCK, c] = plane
  return out.reshape(image.shape)


def rgb_to_hsv_uint8(image: np.ndarray) -> np.ndarray:
  """OpenCV-style 8-bit RGB -> HSV (see the module docstring for the formulas).

  Args:
    image: uint8 (..., 3) RGB.

  Returns:
    uint8 (..., 3) HSV: H in [0, 180) (degrees / 2), S and V in [0, 255].
  """
  _check_image(image)
  return _map_pixels(image, _hsv_planes)


def hsv_to_rgb_uint8(hsv: np.ndarray) -> np.ndarray:
  """OpenCV-style 8-bit HSV -> RGB (see the module docstring); H >= 180 wraps around the hue circle.

  Args:
    hsv: uint8 (..., 3) HSV with H in degrees / 2.

  Returns:
    uint8 (..., 3) RGB.
  """
  _check_image(hsv)
  return _map_pixels(hsv, _rgb_planes)


def affine_lut(alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
  """mmseg's `convert` as a table: uint8 (256,), entry x = clip(float32(x) * alpha + beta, 0, 255) truncated."""
  values = np.arange(256, dtype=np.float32) * np.float32(alpha) + np.float32(beta)
  return np.clip(values, 0, 255).astype(np.uint8)


def hue_lut(delta: int) -> np.ndarray:
  """uint8 (256,): entry H = (H + delta) mod 180."""
  return ((np.arange(256) + int(delta)) % 180).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class _Step:
  """A per-value table applied to every RGB value (channel None) or, inside an HSV round trip, to H (0) or S (1)."""
  table: np.ndarray
  channel: int | None = None


def _run(image: np.ndarray, steps: list[_Step]) -> np.ndarray:
  """Applies steps in order to uint8 (..., 3) RGB; consecutive per-value tables are composed into one."""
  _check_image(image)
  merged: list[_Step] = []
  for step in steps:
    if step.channel is None and merged and merged[-1].channel is None:
      merged[-1] = _Step(np.take(step.table, merged[-1].table))
    else:
      merged.append(step)
  if not merged:
    return image.copy()
  if len(merged) == 1 and merged[0].channel is None:
    return np.take(merged[0].table, image)

  def planes_fn(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> Planes:
    planes = (r, g, b)
    for step in merged:
      if step.channel is None:
        planes = tuple(np.take(step.table, p) for p in planes)
      else:
        hsv = list(_hsv_planes(*planes))
        hsv[step.channel] = np.take(step.table, hsv[step.channel])
        planes = _rgb_planes(*hsv)
    return planes

  return _map_pixels(image, planes_fn)


def adjust_brightness(image: np.ndarray, beta: float) -> np.ndarray:
  """uint8 (..., 3) -> clip(x + beta, 0, 255) truncated, per value."""
  return _run(image, [_Step(affine_lut(beta=beta))])


def adjust_contrast(image: np.ndarray, alpha: float) -> np.ndarray:
  """uint8 (..., 3) -> clip(x * alpha, 0, 255) truncated, per value (mmseg scales values, not around the mean)."""
  return _run(image, [_Step(affine_lut(alpha=alpha))])


def adjust_saturation(image: np.ndarray, alpha: float) -> np.ndarray:
  """uint8 (..., 3) RGB -> HSV, S = clip(S * alpha, 0, 255) truncated, -> RGB."""
  return _run(image, [_Step(affine_lut(alpha=alpha), channel=1)])


def shift_hue(image: np.ndarray, delta: int) -> np.ndarray:
  """uint8 (..., 3) RGB -> HSV, H = (H + delta) mod 180, -> RGB; delta is in H units (2 degrees)."""
  return _run(image, [_Step(hue_lut(delta), channel=0)])


@dataclasses.dataclass(frozen=True)
class DistortionParams:
  """One draw of the augmentation; None means the step is skipped.

  Attributes:
    brightness: beta added to every value.
    contrast: alpha multiplying every value.
    contrast_first: contrast right after brightness (mmseg's mode 1), else last (mode 0).
    saturation: alpha multiplying S.
    hue: integer added to H (modulo 180).
  """
  brightness: float | None = None
  contrast: float | None = None
  contrast_first: bool = False
  saturation: float | None = None
  hue: int | None = None


def apply_distortion(image: np.ndarray, params: DistortionParams) -> np.ndarray:
  """Applies the steps of params in mmseg's order.

  Args:
    image: uint8 (H, W, 3) RGB (any leading shape works).
    params: the draw.

  Returns:
    A new uint8 array of the same shape.
  """
  contrast = [] if params.contrast is None else [_Step(affine_lut(alpha=params.contrast))]
  steps = [] if params.brightness is None else [_Step(affine_lut(beta=params.brightness))]
  if params.contrast_first:
    steps += contrast
  if params.saturation is not None:
    steps.append(_Step(affine_lut(alpha=params.saturation), channel=1))
  if params.hue is not None:
    steps.append(_Step(hue_lut(params.hue), channel=0))
  if not params.contrast_first:
    steps += contrast
  return _run(image, steps)


@dataclasses.dataclass(frozen=True)
class PhotoMetricDistortion:
  """mmseg's PhotoMetricDistortion with an explicit numpy Generator (see the module docstring).

  The random draws are made in mmseg's order (a coin for each step, then its value only if the coin is heads), so
  a given Generator state fixes the result.
  """
  brightness_delta: float = 32
  contrast_range: tuple[float, float] = (0.5, 1.5)
  saturation_range: tuple[float, float] = (0.5, 1.5)
  hue_delta: int = 18

  def sample(self, rng: np.random.Generator) -> DistortionParams:
    """Draws which steps apply and their strengths."""
    brightness = float(rng.uniform(-self.brightness_delta, self.brightness_delta)) if rng.integers(2) else None
    contrast_first = bool(rng.integers(2))
    contrast = None
    if contrast_first and rng.integers(2):
      contrast = float(rng.uniform(*self.contrast_range))
    saturation = float(rng.uniform(*self.saturation_range)) if rng.integers(2) else None
    hue = None
    if rng.integers(2):
      hue = int(rng.integers(-self.hue_delta, self.hue_delta)) if self.hue_delta > 0 else 0
    if not contrast_first and rng.integers(2):
      contrast = float(rng.uniform(*self.contrast_range))
    return DistortionParams(brightness=brightness, contrast=contrast, contrast_first=contrast_first,
                            saturation=saturation, hue=hue)

  def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """image: uint8 (H, W, 3) RGB -> distorted uint8 (H, W, 3) RGB (a new array)."""
    return apply_distortion(image, self.sample(rng))


def photometric_distortion(image: np.ndarray, rng: np.random.Generator, *, brightness_delta: float = 32,
                           contrast_range: tuple[float, float] = (0.5, 1.5),
                           saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> np.ndarray:
  """Functional form of `PhotoMetricDistortion`: uint8 (H, W, 3) RGB -> uint8 (H, W, 3) RGB."""
  return PhotoMetricDistortion(brightness_delta, tuple(contrast_range), tuple(saturation_range), hue_delta)(image, rng)
