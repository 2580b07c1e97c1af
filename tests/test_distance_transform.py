"""Tests of the on-device Euclidean distance transform against scipy.ndimage.distance_transform_edt, bit for bit."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from ctxseg_jax.ops import distance_transform
from ctxseg_jax.ops.distance_transform import distance_transform_edt

DENSITIES = (0.0, 0.05, 0.3, 0.7, 0.95, 1.0)  # fraction of True pixels; 0 and 1 give empty and full maps
_edt = jax.jit(distance_transform_edt)


def _scipy(mask: np.ndarray) -> np.ndarray:
  """scipy's transform of every (H, W) map, float64 cast to float32."""
  maps = mask.reshape((-1,) + mask.shape[-2:])
  return np.stack([ndimage.distance_transform_edt(m) for m in maps]).reshape(mask.shape).astype(np.float32)


def _random_maps(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
  """(len(DENSITIES) * 2, *shape) masks: for each density, one of independent pixels and one of smooth blobs."""
  maps = []
  for density in DENSITIES:
    maps.append(rng.random(shape) < density)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(0,) * (len(shape) - 2) + (2, 2))
    maps.append(field < np.quantile(field, density) if 0 < density < 1 else maps[-1])
  return np.stack(maps)


@pytest.mark.parametrize('shape', [
    (1, 1), (1, 37), (37, 1), (2, 3), (17, 33), (64, 128),
    (2, 3, 9, 13),  # leading dims (B, K) on top of the densities' one: three in all
    (129, 40),  # column distances in uint16
    (300, 7),  # squared column distances beyond uint16: the int32 row pass throughout
    (5, 300),  # wider than the uint16 row pass reaches
])
def test_matches_scipy(shape):
  mask = _random_maps(np.random.default_rng(sum(shape)), shape)
  np.testing.assert_array_equal(np.asarray(_edt(jnp.asarray(mask))), _scipy(mask))


def test_empty_and_full_maps():
  empty = np.zeros((2, 9, 14), bool)
  np.testing.assert_array_equal(np.asarray(_edt(jnp.asarray(empty))), np.zeros(empty.shape, np.float32))
  # No False pixel: scipy measures the distance to (-1, 0), just above the top-left corner.
  full = np.ones((2, 9, 14), bool)
  i, j = np.mgrid[0:9, 0:14]
  expected = np.sqrt((i + 1.0) ** 2 + j ** 2).astype(np.float32)
  np.testing.assert_array_equal(_scipy(full)[0], expected)
  np.testing.assert_array_equal(np.asarray(_edt(jnp.asarray(full))), np.broadcast_to(expected, full.shape))
  # A full map next to ordinary ones keeps its own values.
  mixed = np.stack([full[0], np.eye(9, 14, dtype=bool), empty[0]])
  np.testing.assert_array_equal(np.asarray(_edt(jnp.asarray(mixed))), _scipy(mixed))


def test_single_false_pixel():
  """One background pixel at a corner or in the middle: distances beyond the uint16 row pass (157 at 128 x 256)
  continue in int32."""
  mask = np.ones((3, 128, 256), bool)
  mask[0, 0, 0] = mask[1, 127, 255] = mask[2, 64, 100] = False
  np.testing.assert_array_equal(np.asarray(_edt(jnp.asarray(mask))), _scipy(mask))


def test_jit_and_vmap():
  mask = _random_maps(np.random.default_rng(0), (2, 11, 19))  # (12, 2, 11, 19)
  expected = _scipy(mask)
  np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(jax.vmap(distance_transform_edt)))(mask)), expected)
  swapped = jax.jit(jax.vmap(distance_transform_edt, in_axes=1, out_axes=1))(jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(swapped), expected)


def test_chunks_with_filler_maps(monkeypatch):
  """More maps than one lax.map step takes: 7 maps in steps of 3 (2 all-False filler maps), and of 2."""
  mask = _random_maps(np.random.default_rng(1), (10, 12))[:7]
  for maps_per_step in (3, 2):
    monkeypatch.setattr(distance_transform, '_CHUNK_PIXELS', maps_per_step * 10 * 12)
    np.testing.assert_array_equal(np.asarray(jax.jit(distance_transform_edt)(mask)), _scipy(mask))


def test_float32_sqrt_of_integers_matches_scipy_rounding():
  """The float32 sqrt of an integer below 2^24 equals the float64 sqrt rounded to float32 (here up to 2^20, which
  covers maps up to 724 x 724)."""
  squared = np.arange(1 << 20, dtype=np.int64)
  expected = np.sqrt(squared.astype(np.float64)).astype(np.float32)
  np.testing.assert_array_equal(np.sqrt(squared.astype(np.float32)), expected)
  np.testing.assert_array_equal(np.asarray(jnp.sqrt(jnp.asarray(squared, jnp.int32).astype(jnp.float32))), expected)


def test_input_checks():
  np.testing.assert_array_equal(np.asarray(distance_transform_edt(jnp.array([[0, 3, 3]]))), [[0.0, 1.0, 2.0]])
  with pytest.raises(ValueError, match='shape'):
    distance_transform_edt(jnp.zeros((5,), bool))
  with pytest.raises(ValueError, match='float32'):
    jax.eval_shape(distance_transform_edt, jax.ShapeDtypeStruct((3000, 3000), jnp.bool_))


@pytest.mark.parametrize('radius', [0, 1, 3, 7, 10])
def test_within_distance_equals_thresholded_scipy_distances(radius):
  from ctxseg_jax.ops.dilation import within_distance
  rng = np.random.default_rng(radius)
  for shape, density in (((3, 17, 23), 0.02), ((2, 40, 31), 0.005), ((1, 5, 6), 1.0)):
    mask = rng.random(shape) < density
    got = np.asarray(within_distance(jnp.asarray(mask), radius))
    expected = np.stack([ndimage.distance_transform_edt(~m) <= radius for m in mask])
    np.testing.assert_array_equal(got, expected)
  assert not np.asarray(within_distance(jnp.zeros((9, 9), bool), radius)).any()
