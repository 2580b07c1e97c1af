"""Exact Euclidean distance transform of boolean maps, on device: jittable, vmappable, static shapes.

distance_transform_edt(mask) equals scipy.ndimage.distance_transform_edt applied to every (H, W) map of `mask`,
cast to float32, bit for bit: each True pixel gets the Euclidean distance to the nearest False pixel of its map,
each False pixel 0. Pixels outside the map are not background.

A map with no False pixel at all follows scipy too: its feature transform has no background to point at and leaves
the marker (-1, 0) in place, so scipy returns the distance to the point (-1, 0) just above the top-left corner,
sqrt((i + 1)^2 + j^2) at pixel (i, j). This is what the function returns for such maps (tests cover it).

Squared distances are integers, computed exactly in integer arithmetic; the float32 sqrt of such an integer is the
correctly rounded square root, which equals scipy's float64 sqrt rounded to float32 (double rounding is harmless for
sqrt when the wide format has at least 2p + 2 bits, 53 >= 2 * 24 + 2). This needs an IEEE sqrt (XLA's CPU and GPU
backends) and squared distances below 2^24, which holds for maps up to 2896 x 2896.

The transform is separable: D[i, j] = min_t t^2 + g[i, j + t]^2, where g[i, j] is the distance from (i, j) to the
nearest False pixel of column j. Per chunk of maps (at most _CHUNK_PIXELS pixels, one lax.map step each):

  1. Column pass: g by ceil(log2(H)) doubling steps g <- min(g, g shifted by +-2^k along H, plus 2^k). After the
     steps up to 2^k, g[i] = min over |s| < 2^(k+1) of |s| + g0[i + s]: each such offset is a sum of distinct powers
     of two, and sums with mixed signs cost more than |s|, so they never win. uint8 for H <= 128.
  2. Row pass: shifts t = 1, 2, ... taken 16 at a time in a while loop that stops once no pixel can improve. A shift
     t adds at least t^2, so when every D <= t^2 the remaining shifts cannot lower anything: the loop runs about
     as many shifts as the largest distance in the chunk (16 for maps of blobs), not W. It runs in uint16, where a
     shift costs about half of one in int32, up to the shift uint16 can hold (W - 1 for maps up to 64 x 128, 157 for
     128 x 256); if a pixel of the chunk is farther than that from every False pixel (rare), the chunk goes on in
     int32 from there (lax.cond).
  3. sqrt in float32.

Cost: 2 log2(H) passes over uint8 maps, a few over uint16 ones, and one per 16 row-pass shifts. On 2 CPU cores,
8 x 19 maps of 128 x 256 random blobs take about 7 ms against about 180 ms for scipy map by map
(bench/distance_transform.py); maps whose only False pixel is in a corner, where every shift up to W - 1 is
needed, are the worst case.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

_CHUNK_PIXELS = 1 << 20  # pixels per lax.map step: enough to amortise per-op overhead, few enough to stay in cache
_UNROLL = 16  # row-pass shifts per while-loop iteration, i.e. per early-exit test
_UINT16_MAX = 65535
_NARROW_MAX_SHIFT = 180  # the largest t with 65535 - t^2 > (t + 1)^2 (see _narrow_plan)
_WIDE_PLACEHOLDER = 1 << 30  # int32 stage: above every squared distance, and + (W - 1)^2 stays below 2^31
_MAX_SQUARED = 1 << 24  # float32 holds every integer below this exactly


def distance_transform_edt(mask: jax.Array) -> jax.Array:
  """Exact Euclidean distance from each True pixel to the nearest False pixel of its (H, W) map.

  Args:
    mask: (..., H, W) bool, any number of leading dims (e.g. (B, K, H, W) per-class maps). Other dtypes are read
      as mask != 0, as scipy does.

  Returns:
    float32 (..., H, W): scipy.ndimage.distance_transform_edt of each map, cast to float32 (bitwise equal); 0 on
    False pixels; sqrt((i + 1)^2 + j^2) on maps without any False pixel (see the module docstring).
  """
  mask = jnp.asarray(mask)
  if mask.ndim < 2:
    raise ValueError(f'mask must have shape (..., H, W); got {mask.shape}')
  h, w = mask.shape[-2:]
  if (h - 1) ** 2 + (w - 1) ** 2 >= _MAX_SQUARED:
    raise ValueError(f'maps of {h} x {w} have squared distances float32 cannot hold exactly (at most 2896 x 2896)')
  if mask.dtype != jnp.bool_:
    mask = mask != 0
  return _edt(mask)


@jax.custom_batching.custom_vmap
def _edt(mask: jax.Array) -> jax.Array:
  """distance_transform_edt of a bool (..., H, W) mask."""
  h, w = mask.shape[-2:]
  if mask.size == 0:
    return jnp.zeros(mask.shape, jnp.float32)
  maps = mask.reshape((-1, h, w))
  n = maps.shape[0]
  per_step = max(1, _CHUNK_PIXELS // (h * w))
  if n <= per_step:
    return _transform(maps).reshape(mask.shape)
  chunk = _chunk_size(n, per_step)
  steps = -(-n // chunk)
  if steps * chunk > n:  # all-False filler maps: distance 0 everywhere, no row-pass shifts
    maps = jnp.concatenate([maps, jnp.zeros((steps * chunk - n, h, w), jnp.bool_)])
  out = lax.map(_transform, maps.reshape(steps, chunk, h, w)).reshape(steps * chunk, h, w)
  return out[:n].reshape(mask.shape)


@_edt.def_vmap
def _edt_vmap(axis_size: int, in_batched: list[bool], mask: jax.Array) -> tuple[jax.Array, bool]:
  """Under vmap the mapped axis (leading here) is one more leading axis of maps: the chunks, while loops and the
  int32 fallback stay per chunk, instead of running for every map until the slowest one is done."""
  del axis_size
  return _edt(mask), in_batched[0]


def _chunk_size(n: int, per_step: int) -> int:
  """Maps per lax.map step: a divisor of n if one is at least half of `per_step` (no filler maps), else the even
  split of n into ceil(n / per_step) steps."""
  divisor = max(d for d in range(1, per_step + 1) if n % d == 0)
  if 2 * divisor >= per_step:
    return divisor
  return -(-n // -(-n // per_step))


def _transform(maps: jax.Array) -> jax.Array:
  """(N, H, W) bool -> (N, H, W) float32 distances."""
  n, h, w = maps.shape
  g, far = _column_distance(maps)
  # A column distance below `far` means the column holds a False pixel; row 0 tells for every column at once.
  has_false = jnp.any(g[:, 0, :] < far, axis=-1)[:, None, None]  # (N, 1, 1)
  plan = _narrow_plan(h, w)
  if plan is None:
    squared = _squared_column_distance(g, far, has_false, jnp.int32, _WIDE_PLACEHOLDER)
    return _finish(_row_pass(squared, _WIDE_PLACEHOLDER, w - 1), has_false)
  shift, placeholder = plan
  narrow = _row_pass(_squared_column_distance(g, far, has_false, jnp.uint16, placeholder), placeholder, shift)
  if shift == w - 1:
    return _finish(narrow, has_false)

  def widen():
    # narrow < placeholder is the exact minimum over |t| <= shift; from placeholder up, no column within `shift`
    # has a False pixel. The int32 pass goes on from shift + 1.
    start = jnp.where(narrow < placeholder, narrow.astype(jnp.int32), _WIDE_PLACEHOLDER)
    squared = _squared_column_distance(g, far, has_false, jnp.int32, _WIDE_PLACEHOLDER)
    return _finish(_row_pass(squared, _WIDE_PLACEHOLDER, w - 1, first=shift + 1, start=start), has_false)

  return lax.cond(jnp.max(narrow).astype(jnp.int32) > (shift + 1) ** 2, widen, lambda: _finish(narrow, has_false))


def _narrow_plan(h: int, w: int) -> tuple[int, int] | None:
  """(shift, placeholder) of the uint16 row pass for H x W maps, or None where uint16 cannot hold g^2.

  The pass takes shifts up to `shift`, and columns without a False pixel (and beyond the map) enter it as
  `placeholder` = 65535 - shift^2, so nothing overflows. Every real candidate t^2 + g^2 with |t| <= shift is below
  placeholder (2 shift^2 + (H - 1)^2 < 65535), so a result below placeholder is the exact minimum over those shifts.
  A result D <= (shift + 1)^2 (< placeholder) is final: larger shifts add more than D. When shift = W - 1 every
  result is final; otherwise larger results continue in int32.
  """
  room = _UINT16_MAX - (h - 1) ** 2
  if room <= 0:
    return None
  shift = min(w - 1, _NARROW_MAX_SHIFT, math.isqrt((room - 1) // 2))
  return shift, _UINT16_MAX - shift ** 2


def _column_distance(maps: jax.Array) -> tuple[jax.Array, int]:
  """(N, H, W) bool -> (g, far): g (N, H, W) is the distance along H to the nearest False pixel of the column,
  exact where the column has one; g >= far (a power of two >= H) where it has none."""
  h = maps.shape[1]
  steps = (h - 1).bit_length()
  far = 1 << steps
  dtype = jnp.uint8 if steps <= 7 else jnp.uint16 if steps <= 15 else jnp.int32  # values stay below 2 * far
  g = jnp.where(maps, jnp.asarray(far, dtype), jnp.asarray(0, dtype))
  # Each step is a reduce_window with dilation d: min of the neighbours at -d and +d (and of g itself, which the
  # outer minimum makes harmless), padding read as `far` (no False pixel outside the map). Written with shifted
  # slices instead, XLA:CPU fuses every step into the next and recomputes the whole chain in each.
  for k in range(steps):
    d = 1 << k
    neighbours = lax.reduce_window(g, jnp.asarray(far, dtype), lax.min, (1, 3, 1), (1, 1, 1),
                                   ((0, 0), (d, d), (0, 0)), window_dilation=(1, d, 1))
    g = jnp.minimum(g, neighbours + jnp.asarray(d, dtype))
  return g, far


def _squared_column_distance(g: jax.Array, far: int, has_false: jax.Array, dtype, placeholder: int) -> jax.Array:
  """(N, H, W) g^2 in `dtype`, capped at `placeholder`, which also stands for columns without a False pixel; 0 on
  maps without any False pixel (they get their values in _finish), so that they never hold the row pass up."""
  cap = jnp.asarray(placeholder, dtype)
  if g.dtype == jnp.uint8:
    squared = jnp.minimum(g.astype(dtype) * g.astype(dtype), cap)  # g < 256: no overflow in uint16
  else:
    g = jnp.minimum(g.astype(jnp.int32), far)  # far <= 4096 as (H - 1)^2 < 2^24, so far^2 fits
    squared = jnp.minimum(g * g, placeholder).astype(dtype)
  squared = jnp.where(g < far, squared, cap)
  return jnp.where(has_false, squared, jnp.zeros((), dtype))


def _row_pass(squared: jax.Array, placeholder: int, max_shift: int, first: int = 1,
              start: jax.Array | None = None) -> jax.Array:
  """D[n, i, j] = min(start, min over first <= |t| <= max_shift of t^2 + squared[n, i, j + t]), (N, H, W) in the
  dtype of `squared`; `start` defaults to `squared` (the shift t = 0) with first = 1.

  Columns beyond the map read as `placeholder`. The while loop stops once t > max_shift or every D <= t^2.
  """
  n, h, w = squared.shape
  if max_shift < first:
    return squared if start is None else start
  dtype = squared.dtype
  unroll = min(_UNROLL, max_shift - first + 1)
  fill = jnp.full((n, h, max_shift), placeholder, dtype)
  padded = jnp.concatenate([fill, squared, fill], axis=2)  # (N, H, W + 2 * max_shift)

  def body(carry):
    t, d, _ = carry
    for u in range(unroll):
      s = jnp.minimum(t + u, max_shift)  # the last block repeats max_shift rather than reading past the padding
      left = lax.dynamic_slice_in_dim(padded, max_shift - s, w, axis=2)
      right = lax.dynamic_slice_in_dim(padded, max_shift + s, w, axis=2)
      d = jnp.minimum(d, jnp.minimum(left, right) + (s * s).astype(dtype))
    t = t + unroll
    return t, d, (t <= max_shift) & (jnp.max(d).astype(jnp.int32) > t * t)

  start = squared if start is None else start
  _, d, _ = lax.while_loop(lambda carry: carry[2], body, (jnp.int32(first), start, jnp.bool_(True)))
  return d


def _finish(squared: jax.Array, has_false: jax.Array) -> jax.Array:
  """float32 sqrt of the (N, H, W) squared distances; scipy's values on maps without a False pixel."""
  h, w = squared.shape[1:]
  i = lax.broadcasted_iota(jnp.int32, (h, w), 0)
  j = lax.broadcasted_iota(jnp.int32, (h, w), 1)
  no_background = ((i + 1) ** 2 + j ** 2).astype(jnp.float32)
  return jnp.sqrt(jnp.where(has_false, squared.astype(jnp.float32), no_background))
