"""Benchmark of the exact Euclidean distance transform against scipy on the host, per (image, class) map.

  python bench/distance_transform.py --out FILE [--shapes B,K,H,W ...] [--repeats N] [--warmup N] [--impls NAME ...]

Input: boolean maps of shape (B, K, H, W), by default (8, 19, 128, 256) and (8, 19, 64, 128) (the stride-4 and
stride-8 features of a 512x1024 Cityscapes crop, 19 classes). Each map is made of random blobs, like error regions:
Gaussian noise smoothed with sigma = 4 pixels, True above the map's own quantile, so that a fraction drawn
uniformly from [0.1, 0.3] of its pixels is True. The seed is fixed: every implementation sees the same maps. Two
implementations run, each in its own subprocess (one per shape) so that its peak RSS is its own:

  ctxseg_jax  ctxseg_jax.ops.distance_transform.distance_transform_edt, jitted, on the device-resident mask.
  scipy_host  the mask copied from the device to the host (np.array of the jax array, part of every step), then
              scipy.ndimage.distance_transform_edt on each of the B * K maps in a Python loop, written into a
              float32 (B, K, H, W) array.

`exact` compares the step's output with scipy's float64 distances cast to float32, element for element (no
tolerance). Timings are medians over `--repeats` steps after `--warmup` untimed ones (which include compilation).
Rows also give the input's fraction of True pixels and its largest distance (the row pass of ctxseg_jax takes about
that many shifts), and megapixels per second.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import harness  # noqa: E402

IMPLS = ('ctxseg_jax', 'scipy_host')
SHAPES = ((8, 19, 128, 256), (8, 19, 64, 128))
SIGMA = 4.0


def blob_masks(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
  """(..., H, W) bool maps of random blobs, each with a fraction in [0.1, 0.3] of its pixels True."""
  from scipy import ndimage

  rng = np.random.default_rng(seed)
  noise = rng.standard_normal(shape).astype(np.float32)
  field = ndimage.gaussian_filter(noise, sigma=(0,) * (len(shape) - 2) + (SIGMA, SIGMA))
  maps = field.reshape((-1,) + shape[-2:])
  fraction = rng.uniform(0.1, 0.3, maps.shape[0])
  thresholds = np.stack([np.quantile(m, 1.0 - f) for m, f in zip(maps, fraction)])
  return (maps > thresholds[:, None, None]).reshape(shape)


def scipy_transform(mask: np.ndarray) -> np.ndarray:
  """scipy's transform of every (H, W) map of a host mask, into a float32 array of the mask's shape."""
  from scipy import ndimage

  out = np.empty(mask.shape, np.float32)
  maps, out_maps = mask.reshape((-1,) + mask.shape[-2:]), out.reshape((-1,) + mask.shape[-2:])
  for index in range(maps.shape[0]):
    out_maps[index] = ndimage.distance_transform_edt(maps[index])
  return out


def _step(impl: str, mask: np.ndarray) -> tuple[Callable[[], Any], dict[str, Any]]:
  """A step computing the distances of the device-resident mask, returning them as a host array, and extra facts."""
  import jax
  import jax.numpy as jnp

  device_mask = jax.block_until_ready(jnp.asarray(mask))
  extra: dict[str, Any] = {'jax': jax.__version__, 'jax_device': str(jax.devices()[0]), 'cores': harness.num_cores()}
  if impl == 'ctxseg_jax':
    from ctxseg_jax.ops.distance_transform import distance_transform_edt

    fn = jax.jit(distance_transform_edt)
    return lambda: jax.block_until_ready(fn(device_mask)), extra
  import scipy

  extra['scipy'] = scipy.__version__
  return lambda: scipy_transform(np.array(device_mask)), extra


def run_worker(impl: str, shape: tuple[int, ...], repeats: int, warmup: int) -> dict[str, Any]:
  """Times one implementation at one shape in this process; returns its result row."""
  mask = blob_masks(shape)
  step, extra = _step(impl, mask)
  timing = harness.time_step(step, repeats, warmup)
  reference = scipy_transform(mask)
  exact = bool(np.array_equal(np.asarray(step()), reference))
  return {'impl': impl, 'shape': list(shape), **timing, 'exact': exact,
          'megapixels_per_s': mask.size / timing['median_s'] / 1e6, 'true_fraction': float(mask.mean()),
          'max_distance': float(reference.max()), **extra}


def main(argv: list[str] | None = None) -> None:
  harness.shapes_main(argv, script=__file__, doc=__doc__, impls=IMPLS, run_worker=run_worker, shapes=SHAPES,
                      baseline='scipy_host', unit='ms', repeats=10, warmup=2)


if __name__ == '__main__':
  main()
