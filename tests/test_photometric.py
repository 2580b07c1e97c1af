"""Tests of the mmseg-style photometric distortion and its OpenCV-style 8-bit HSV conversions.

Three references for the conversions: a per-pixel transcription of OpenCV's 8-bit formulas (fixed-point RGB -> HSV,
float32 HSV -> RGB with truncation), which must match exactly; Python's `colorsys` in float64, which must agree within
one level (the fixed-point divisions and the final truncation are the only differences); and named colours whose HSV
is known by hand.
"""
from __future__ import annotations

import colorsys

import numpy as np
import pytest

from ctxseg_jax.data import photometric as pm

f32 = np.float32
_RNG = np.random.default_rng(1234)
# (B, G, R) positions in the hexcone table of v, v(1 - s), v(1 - s f), v(1 - s(1 - f)), per sector.
_SECTOR_TABLE = [(1, 3, 0), (1, 0, 2), (3, 0, 1), (0, 2, 1), (0, 1, 3), (2, 1, 0)]


def _cv_rgb_to_hsv(r: int, g: int, b: int) -> tuple[int, int, int]:
  """One pixel, OpenCV's 8-bit RGB -> HSV arithmetic written out with Python integers."""
  v = max(r, g, b)
  d = v - min(r, g, b)
  s = (d * (round((255 << 12) / v) if v else 0) + 2048) >> 12
  if v == r:
    n = g - b
  elif v == g:
    n = b - r + 2 * d
  else:
    n = r - g + 4 * d
  h = (n * (round((180 << 12) / (6 * d)) if d else 0) + 2048) >> 12
  return (h + 180 if h < 0 else h), s, v


def _cv_hsv_to_rgb(h: int, s: int, v: int) -> tuple[int, int, int]:
  """One pixel, OpenCV's vectorised 8-bit HSV -> RGB arithmetic with float32 scalars and a sector table."""
  hh = f32(h) * (f32(6) / f32(180))
  whole = np.trunc(hh)
  frac = hh - whole
  sector = int(whole - f32(6) * np.trunc(whole * (f32(1) / f32(6))))
  sf, vf = f32(s) * f32(1 / 255), f32(v) * f32(1 / 255)
  tab = (vf, vf * (f32(1) - sf), vf * (f32(1) - sf * frac), vf * (f32(1) - sf * (f32(1) - frac)))
  bi, gi, ri = _SECTOR_TABLE[sector]
  return tuple(int(tab[i] * f32(255)) for i in (ri, gi, bi))


@pytest.fixture(scope='module')
def all_colours() -> np.ndarray:
  """Every 8-bit RGB colour once, uint8 (4096, 4096, 3) (several conversion blocks)."""
  codes = np.arange(1 << 24, dtype=np.uint32)
  return np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=-1).astype(np.uint8).reshape(4096, 4096, 3)


@pytest.fixture(scope='module')
def all_colours_hsv(all_colours) -> np.ndarray:
  return pm.rgb_to_hsv_uint8(all_colours)


def _image(shape=(37, 53, 3)) -> np.ndarray:
  return _RNG.integers(0, 256, shape, dtype=np.uint8)


# --- HSV conversions -------------------------------------------------------------------------------------------------


def test_rgb_to_hsv_matches_opencv_arithmetic_exactly(all_colours, all_colours_hsv):
  flat, hsv = all_colours.reshape(-1, 3), all_colours_hsv.reshape(-1, 3)
  picks = np.concatenate([_RNG.integers(0, 1 << 24, 4000), np.arange(256) * 0x010101, [0xFF0000, 0x00FF00, 0x0000FF]])
  for i in picks:
    assert tuple(int(x) for x in hsv[i]) == _cv_rgb_to_hsv(*(int(x) for x in flat[i])), flat[i]
  assert hsv[..., 0].max() == 179


def test_hsv_to_rgb_matches_opencv_arithmetic_exactly():
  hsv = np.concatenate([_RNG.integers(0, 256, (4000, 3), dtype=np.uint8),
                        np.array([[h, s, v] for h in (0, 29, 30, 31, 89, 90, 179, 180, 255)
                                  for s in (0, 1, 254, 255) for v in (0, 1, 128, 255)], dtype=np.uint8)])
  rgb = pm.hsv_to_rgb_uint8(hsv)
  for pixel, expected in zip(hsv, rgb):
    assert _cv_hsv_to_rgb(*(int(x) for x in pixel)) == tuple(int(x) for x in expected), pixel


def test_rgb_to_hsv_agrees_with_colorsys_within_one_level():
  # Exact: V = max. H and S are rounded by fixed-point division: within 0.5 of colorsys except for a few colours
  # where the 12-bit reciprocal tips the rounding, and never off by a whole level.
  rgb = np.concatenate([_RNG.integers(0, 256, (3000, 3), dtype=np.uint8),
                        np.array([[1, 0, 0], [255, 254, 254], [0, 1, 1], [2, 1, 0]], dtype=np.uint8)])
  hsv = pm.rgb_to_hsv_uint8(rgb).astype(np.float64)
  ref = np.array([colorsys.rgb_to_hsv(*(rgb_ / 255.0)) for rgb_ in rgb.astype(np.float64)])
  np.testing.assert_array_equal(hsv[:, 2], rgb.max(axis=1))
  hue_error = np.abs((hsv[:, 0] - ref[:, 0] * 180 + 90) % 180 - 90)
  sat_error = np.abs(hsv[:, 1] - ref[:, 1] * 255)
  assert hue_error.max() < 1 and sat_error.max() < 1
  assert np.mean(hue_error > 0.5 + 1e-9) < 0.05 and np.mean(sat_error > 0.5 + 1e-9) < 0.05


def test_hsv_to_rgb_agrees_with_colorsys_within_one_level():
  # OpenCV truncates: the exact value minus ours is in [0, 1) up to float32 error, i.e. at most one level.
  hsv = _RNG.integers(0, 256, (3000, 3), dtype=np.uint8)
  hsv[:, 0] %= 180
  rgb = pm.hsv_to_rgb_uint8(hsv).astype(np.float64)
  ref = np.array([colorsys.hsv_to_rgb(h / 180, s / 255, v / 255) for h, s, v in hsv.astype(np.float64)]) * 255
  gap = ref - rgb
  assert gap.min() > -1e-3 and gap.max() < 1 + 1e-3
  assert np.mean(rgb == np.floor(ref + 1e-4)) > 0.95


@pytest.mark.parametrize('rgb, hsv', [
    ((0, 0, 0), (0, 0, 0)), ((255, 255, 255), (0, 0, 255)), ((128, 128, 128), (0, 0, 128)),
    ((255, 0, 0), (0, 255, 255)), ((255, 255, 0), (30, 255, 255)), ((0, 255, 0), (60, 255, 255)),
    ((0, 255, 255), (90, 255, 255)), ((0, 0, 255), (120, 255, 255)), ((255, 0, 255), (150, 255, 255)),
    ((128, 0, 0), (0, 255, 128)), ((255, 128, 128), (0, 127, 255)),
])
def test_named_colours(rgb, hsv):
  assert tuple(pm.rgb_to_hsv_uint8(np.array(rgb, dtype=np.uint8))) == hsv


def test_pure_hues_back_to_rgb():
  # H * (6 / 180) in float32 is 3.0000002 for H = 90 and 5.0000005 for H = 150: just past the sector start, so the
  # rising channel is 255 * (1 - tiny) and truncates to 254, as OpenCV's float32 arithmetic does.
  hsv = np.array([[h, 255, 255] for h in (0, 30, 60, 90, 120, 150)], dtype=np.uint8)
  expected = [(255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 254, 255), (0, 0, 255), (255, 0, 254)]
  assert [tuple(int(x) for x in p) for p in pm.hsv_to_rgb_uint8(hsv)] == expected


def test_greys_round_trip_exactly():
  greys = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
  hsv = pm.rgb_to_hsv_uint8(greys)
  assert np.all(hsv[:, :2] == 0) and np.array_equal(hsv[:, 2], greys[:, 0])
  np.testing.assert_array_equal(pm.hsv_to_rgb_uint8(hsv), greys)


def test_round_trip_error_bound_over_all_colours(all_colours, all_colours_hsv):
  # H is quantised to 2 degrees, so the middle channel can move by up to (1/60) * (max - min) ~ 4.3 levels, plus
  # S rounding (< 1) and the final truncation (< 1); the maximum channel is exact.
  back = pm.hsv_to_rgb_uint8(all_colours_hsv)
  error = np.abs(back.astype(np.int16) - all_colours)
  assert error.max() <= 6
  assert error.mean() < 0.6
  np.testing.assert_array_equal(back.max(axis=-1), all_colours.max(axis=-1))


def test_conversions_keep_shape_and_reject_other_dtypes():
  image = _image((2, 5, 7, 3))
  assert pm.rgb_to_hsv_uint8(image).shape == image.shape
  assert pm.hsv_to_rgb_uint8(image).dtype == np.uint8
  with pytest.raises(ValueError):
    pm.rgb_to_hsv_uint8(image.astype(np.float32))
  with pytest.raises(ValueError):
    pm.photometric_distortion(image[..., :2], np.random.default_rng(0))


# --- Single steps ----------------------------------------------------------------------------------------------------


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
  """mmseg's convert, written directly: float32 multiply-add, clip, cast (truncation)."""
  return np.clip(x.astype(np.float32) * np.float32(alpha) + np.float32(beta), 0, 255).astype(np.uint8)


@pytest.mark.parametrize('beta', [-32.0, -7.9, -0.4, 0.6, 13.37, 31.99])
def test_brightness_is_clipped_truncated_offset(beta):
  image = _image()
  np.testing.assert_array_equal(pm.adjust_brightness(image, beta), _convert(image, beta=beta))


@pytest.mark.parametrize('alpha', [0.5, 0.77, 1.0, 1.23, 1.5])
def test_contrast_is_clipped_truncated_scale(alpha):
  image = _image()
  np.testing.assert_array_equal(pm.adjust_contrast(image, alpha), _convert(image, alpha=alpha))


def test_convert_truncates_rather_than_rounds():
  np.testing.assert_array_equal(pm.affine_lut(beta=0.9)[[0, 100, 254, 255]], [0, 100, 254, 255])
  np.testing.assert_array_equal(pm.affine_lut(alpha=1.5)[[0, 1, 3, 170, 171]], [0, 1, 4, 255, 255])


@pytest.mark.parametrize('alpha', [0.0, 0.5, 0.91, 1.0, 1.5])
def test_saturation_scales_s_through_convert(alpha):
  image = _image()
  hsv = pm.rgb_to_hsv_uint8(image)
  hsv[..., 1] = _convert(hsv[..., 1], alpha=alpha)
  out = pm.adjust_saturation(image, alpha)
  np.testing.assert_array_equal(out, pm.hsv_to_rgb_uint8(hsv))
  if alpha == 0.0:  # No saturation left: grey at V = max(R, G, B).
    np.testing.assert_array_equal(out, np.repeat(image.max(axis=-1, keepdims=True), 3, axis=-1))


@pytest.mark.parametrize('delta', [-18, -5, 0, 1, 17, 18, 179])
def test_hue_shift_is_modulo_180(delta):
  image = _image()
  hsv = pm.rgb_to_hsv_uint8(image)
  hsv[..., 0] = (hsv[..., 0].astype(int) + delta) % 180
  np.testing.assert_array_equal(pm.shift_hue(image, delta), pm.hsv_to_rgb_uint8(hsv))


def test_hue_shift_turns_primaries():
  red = np.array([[[255, 0, 0]]], dtype=np.uint8)
  assert tuple(pm.shift_hue(red, 60)[0, 0]) == (0, 255, 0)
  assert tuple(pm.shift_hue(red, -60)[0, 0]) == (0, 0, 255)  # Wraps below 0 to H = 120.
  assert tuple(pm.rgb_to_hsv_uint8(pm.shift_hue(red, -1))[0, 0]) == (179, 255, 255)


# --- The whole augmentation ------------------------------------------------------------------------------------------


def test_order_matches_mmseg_for_both_modes():
  image = _image()
  params = dict(brightness=-11.3, contrast=1.37, saturation=0.62, hue=-9)
  brightened = pm.adjust_brightness(image, params['brightness'])
  contrast_first = pm.shift_hue(pm.adjust_saturation(pm.adjust_contrast(brightened, 1.37), 0.62), -9)
  contrast_last = pm.adjust_contrast(pm.shift_hue(pm.adjust_saturation(brightened, 0.62), -9), 1.37)
  first = pm.apply_distortion(image, pm.DistortionParams(contrast_first=True, **params))
  last = pm.apply_distortion(image, pm.DistortionParams(contrast_first=False, **params))
  np.testing.assert_array_equal(first, contrast_first)
  np.testing.assert_array_equal(last, contrast_last)
  assert not np.array_equal(first, last)


def test_saturation_and_hue_each_make_their_own_round_trip():
  image = _image()
  both = pm.apply_distortion(image, pm.DistortionParams(saturation=1.2, hue=5))
  np.testing.assert_array_equal(both, pm.shift_hue(pm.adjust_saturation(image, 1.2), 5))


def test_skipped_steps_leave_the_image_alone():
  image = _image()
  out = pm.apply_distortion(image, pm.DistortionParams())
  np.testing.assert_array_equal(out, image)
  assert out is not image


class _HeadsRng:
  """Stub generator: every coin is heads, values are fixed."""

  def integers(self, low, high=None):
    return 1 if high is None else high - 1

  def uniform(self, low, high):
    return high


class _TailsRng(_HeadsRng):

  def integers(self, low, high=None):
    return 0 if high is None else low


def test_sample_with_stub_generators():
  aug = pm.PhotoMetricDistortion()
  assert aug.sample(_HeadsRng()) == pm.DistortionParams(brightness=32.0, contrast=1.5, contrast_first=True,
                                                        saturation=1.5, hue=17)
  assert aug.sample(_TailsRng()) == pm.DistortionParams(contrast_first=False)


def test_sample_draws_in_mmseg_order():
  # Coin, then the value only when the coin is heads: brightness, mode, [contrast], saturation, hue, [contrast].
  aug = pm.PhotoMetricDistortion()
  for seed in range(20):
    params, rng = aug.sample(np.random.default_rng(seed)), np.random.default_rng(seed)
    brightness = rng.uniform(-32, 32) if rng.integers(2) else None
    first = bool(rng.integers(2))
    contrast = rng.uniform(0.5, 1.5) if first and rng.integers(2) else None
    saturation = rng.uniform(0.5, 1.5) if rng.integers(2) else None
    hue = int(rng.integers(-18, 18)) if rng.integers(2) else None
    if not first and rng.integers(2):
      contrast = rng.uniform(0.5, 1.5)
    assert params == pm.DistortionParams(brightness, contrast, first, saturation, hue)


def test_sample_statistics():
  aug = pm.PhotoMetricDistortion(brightness_delta=20, contrast_range=(0.8, 1.2), saturation_range=(0.6, 0.9),
                                 hue_delta=5)
  rng = np.random.default_rng(0)
  draws = [aug.sample(rng) for _ in range(4000)]
  for name in ('brightness', 'contrast', 'saturation', 'hue'):
    assert 0.46 < np.mean([getattr(p, name) is not None for p in draws]) < 0.54, name
  assert 0.46 < np.mean([p.contrast_first for p in draws]) < 0.54
  assert all(-20 <= p.brightness < 20 for p in draws if p.brightness is not None)
  assert all(0.8 <= p.contrast < 1.2 for p in draws if p.contrast is not None)
  assert all(0.6 <= p.saturation < 0.9 for p in draws if p.saturation is not None)
  # numpy's randint excludes the upper bound, as in mmseg: [-hue_delta, hue_delta - 1].
  assert {p.hue for p in draws if p.hue is not None} == set(range(-5, 5))


def test_deterministic_given_the_generator_state():
  image = _image((64, 48, 3))
  aug = pm.PhotoMetricDistortion()
  for seed in range(5):
    first = aug(image, np.random.default_rng(seed))
    np.testing.assert_array_equal(first, aug(image, np.random.default_rng(seed)))
    np.testing.assert_array_equal(first, pm.photometric_distortion(image, np.random.default_rng(seed)))


def test_shape_dtype_kept_and_input_untouched():
  image = _image((70, 1000, 3))  # More pixels than one block.
  before = image.copy()
  for seed in range(6):
    out = pm.photometric_distortion(image, np.random.default_rng(seed))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.shares_memory(out, image)
  np.testing.assert_array_equal(image, before)


def test_changes_the_image_for_most_seeds():
  # All four coins are tails with probability 1/16; every other draw should change a random image.
  image = _image((32, 32, 3))
  changed = [not np.array_equal(pm.photometric_distortion(image, np.random.default_rng(s)), image) for s in range(64)]
  assert np.mean(changed) > 0.8


def test_non_contiguous_input():
  image = _image((40, 60, 3))
  view = image[::2, ::-1]
  params = pm.DistortionParams(brightness=3.0, saturation=1.3, hue=4)
  np.testing.assert_array_equal(pm.apply_distortion(view, params),
                                pm.apply_distortion(np.ascontiguousarray(view), params))
