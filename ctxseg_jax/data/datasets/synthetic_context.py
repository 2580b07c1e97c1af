"""A procedurally generated dataset whose labels can only be predicted well with scene context.

Every image shows one of two scenes: 'sea' (a band of water at the bottom) or 'city' (a band of road). The rest
of the image is ground texture with the same statistics in both scenes. Objects are scattered anywhere in the
image, most of them on the ground far from the band:

  * a 'vehicle' (rounded box with a stripe) is a boat in a sea scene and a car in a city scene;
  * a 'marker' (small disc with a band, about 4-8 px at 96 px) is a buoy at sea and a sign in the city;
  * a 'person' (head, torso, legs) looks the same and has the same class in both scenes.

Boat and car (and buoy and sign) come from the same rendering function with the same appearance distribution, so
the pixels of such an object and its neighbourhood say nothing about its class: only the band, possibly far
away, does. A 1-pixel ignore outline around every object (as in VOC) keeps labels from being perfectly aligned
with edges.

A sample is a pure function of (seed, split, index) and the image size, so the source needs no storage, supports
random access and pickles as four numbers.
"""
from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Sequence

import numpy as np

from ctxseg_jax.data.datasets import base

CLASS_NAMES = ('ground', 'water', 'road', 'boat', 'car', 'buoy', 'sign', 'person')
GROUND, WATER, ROAD, BOAT, CAR, BUOY, SIGN, PERSON = range(len(CLASS_NAMES))

SYNTHETIC_CONTEXT_INFO = base.DatasetInfo(
    name='synthetic_context',
    class_names=CLASS_NAMES,
    palette=((140, 110, 70), (40, 110, 220), (128, 128, 128), (255, 140, 0), (220, 20, 60), (255, 230, 0),
             (0, 200, 200), (190, 70, 220)),
)

SCENES = ('sea', 'city')
KINDS = ('vehicle', 'marker', 'person')
# The kind fixes the appearance; the scene alone fixes the class.
CLASS_OF = {
    ('vehicle', 'sea'): BOAT, ('vehicle', 'city'): CAR,
    ('marker', 'sea'): BUOY, ('marker', 'city'): SIGN,
    ('person', 'sea'): PERSON, ('person', 'city'): PERSON,
}
KIND_OF = {BOAT: 'vehicle', CAR: 'vehicle', BUOY: 'marker', SIGN: 'marker', PERSON: 'person'}

MIN_IMAGE_SIZE = 32
_KIND_PROBS = (0.3, 0.4, 0.3)
_NUM_OBJECTS = (2, 6)            # inclusive
_BAND_FRACTION = (0.20, 0.35)    # of the image height

_VEHICLE_COLOURS = np.array([(200, 35, 35), (235, 125, 25), (235, 205, 40), (235, 235, 230), (35, 50, 120),
                             (35, 35, 40)], np.float32)
_MARKER_COLOURS = np.array([(230, 40, 30), (250, 140, 20), (245, 225, 50), (245, 245, 245)], np.float32)
_SKIN_COLOURS = np.array([(235, 190, 150), (200, 145, 105), (140, 95, 65)], np.float32)
_CLOTHES_COLOURS = np.array([(120, 60, 170), (30, 150, 140), (200, 50, 150), (150, 220, 40)], np.float32)
_DARK = np.array((30, 30, 35), np.float32)
_LIGHT = np.array((240, 240, 235), np.float32)


@dataclasses.dataclass(frozen=True)
class Sprite:
  """An object's appearance before placement: `rgb` float32 (h, w, 3) in 0..255, `mask` bool (h, w)."""
  rgb: np.ndarray
  mask: np.ndarray


def split_code(split: str) -> int:
  """A stable integer for a split name (Python's `hash` of a str changes between processes)."""
  return zlib.crc32(split.encode('utf-8'))


def _scale(image_size: int) -> float:
  return image_size / 96


def _size(rng: np.random.Generator, low: float, high: float, scale: float, minimum: int) -> int:
  return max(minimum, int(round(rng.uniform(low, high) * scale)))


def _pick(rng: np.random.Generator, colours: np.ndarray, jitter: float) -> np.ndarray:
  colour = colours[rng.integers(len(colours))] + rng.uniform(-jitter, jitter, 3).astype(np.float32)
  return np.clip(colour, 0, 255)


def _contrast(colour: np.ndarray) -> np.ndarray:
  return _DARK if colour @ np.array((0.299, 0.587, 0.114), np.float32) > 110 else _LIGHT


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates: y (h, 1) and x (1, w)."""
  return np.arange(h, dtype=np.float32)[:, None] + 0.5, np.arange(w, dtype=np.float32)[None, :] + 0.5


def _vehicle(rng: np.random.Generator, scale: float) -> Sprite:
  w = _size(rng, 12, 26, scale, 6)
  h = max(4, int(round(w * rng.uniform(0.45, 0.65))))
  radius = min(h, w) * rng.uniform(0.2, 0.4)
  y, x = _grid(h, w)
  # Rounded-box test: distance from the inner rectangle (shrunk by the corner radius) at most the radius.
  qy = np.maximum(np.abs(y - h / 2) - (h / 2 - radius), 0)
  qx = np.maximum(np.abs(x - w / 2) - (w / 2 - radius), 0)
  mask = qy ** 2 + qx ** 2 <= radius ** 2
  body = _pick(rng, _VEHICLE_COLOURS, 15)
  rgb = np.broadcast_to(body, (h, w, 3)).copy()
  top = int(round(h * rng.uniform(0.3, 0.45)))
  rgb[top:top + max(1, int(round(h * 0.25)))] = _contrast(body)
  return Sprite(rgb, mask)


def _marker(rng: np.random.Generator, scale: float) -> Sprite:
  d = _size(rng, 4.5, 8.5, scale, 3)
  y, x = _grid(d, d)
  mask = (y - d / 2) ** 2 + (x - d / 2) ** 2 <= (d / 2 + 0.25) ** 2
  body = _pick(rng, _MARKER_COLOURS, 12)
  rgb = np.broadcast_to(body, (d, d, 3)).copy()
  thick = max(1, d // 4)
  rgb[(d - thick) // 2:(d - thick) // 2 + thick] = _contrast(body)
  return Sprite(rgb, mask)


def _person(rng: np.random.Generator, scale: float) -> Sprite:
  h = _size(rng, 12, 22, scale, 7)
  w = max(3, int(round(h * rng.uniform(0.3, 0.4))))
  head = min(w, max(2, int(round(h * 0.25))))
  legs = int(round(h * 0.7))
  y, x = _grid(h, w)
  mask = np.zeros((h, w), bool)
  mask[:head] = (y[:head] - head / 2) ** 2 + (x - w / 2) ** 2 <= (head / 2 + 0.25) ** 2
  mask[head:] = True
  if w >= 4:  # a gap between the legs
    gap = slice(w // 2 - (w % 2 == 0), w // 2 + 1)
    mask[legs + 1:, gap] = False
  rgb = np.empty((h, w, 3), np.float32)
  rgb[:head] = _pick(rng, _SKIN_COLOURS, 10)
  rgb[head:legs] = _pick(rng, _CLOTHES_COLOURS, 15)
  rgb[legs:] = _DARK + rng.uniform(0, 30)
  return Sprite(rgb, mask)


_RENDERERS = {'vehicle': _vehicle, 'marker': _marker, 'person': _person}


def render_object(class_id: int, rng: np.random.Generator, image_size: int) -> Sprite:
  """Draws an object of class BOAT, CAR, BUOY, SIGN or PERSON at the scale of an `image_size` image.

  The appearance depends on the kind only (KIND_OF[class_id]): boat and car, or buoy and sign, drawn from
  generators in the same state give identical sprites.
  """
  if class_id not in KIND_OF:
    raise ValueError(f'class {class_id} is not an object class; choose one of {sorted(KIND_OF)}')
  return _RENDERERS[KIND_OF[class_id]](rng, _scale(image_size))


@functools.lru_cache(maxsize=64)
def _lerp_weights(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
  """For `size` pixels spread over cells + 1 knots: the knot before each pixel (int (size,)) and the weight of
  the knot after it (float32 (size,))."""
  pos = (np.arange(size) + 0.5) / size * cells
  lo = np.minimum(np.floor(pos).astype(np.intp), cells - 1)
  frac = (pos - lo).astype(np.float32)
  lo.flags.writeable = frac.flags.writeable = False
  return lo, frac


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float, channels: int) -> np.ndarray:
  """Unit-variance-ish value noise with features about `cell` pixels wide: float32 (h, w, channels)."""
  y_lo, y_frac = _lerp_weights(h, max(1, int(round(h / cell))))
  x_lo, x_frac = _lerp_weights(w, max(1, int(round(w / cell))))
  knots = rng.standard_normal((int(y_lo[-1]) + 2, int(x_lo[-1]) + 2, channels), dtype=np.float32)
  # Separable bilinear interpolation by gathers, not matrix products: BLAS threads slow these tiny products
  # down by 10x or more when the host is busy (grain workers next to a training process).
  y_frac, x_frac = y_frac[:, None, None], x_frac[:, None]
  rows = knots[y_lo] * (1 - y_frac) + knots[y_lo + 1] * y_frac
  return rows[:, x_lo] * (1 - x_frac) + rows[:, x_lo + 1] * x_frac


def _ground(rng: np.random.Generator, size: int) -> np.ndarray:
  scale = _scale(size)
  base = np.array((105, 95, 60), np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
  blotches = 16 * _smooth_noise(rng, size, size, 20 * scale, 1)
  grain = 7 * _smooth_noise(rng, size, size, 3 * scale, 3)
  return base + blotches + grain


def _water(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
  y, x = _grid(h, w)
  period = rng.uniform(4, 7) * scale
  swell = rng.uniform(20, 40) * scale
  phase = 2 * np.pi * y / period + 1.2 * np.sin(2 * np.pi * x / swell + rng.uniform(0, 2 * np.pi))
  waves = np.sin(phase + rng.uniform(0, 2 * np.pi))
  base = np.array((40, 95, 170), np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
  return base + (14 * waves + 30 * (waves > 0.75))[..., None]


def _road(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
  grey = rng.uniform(80, 115)
  band = np.array((grey, grey, grey + 3), np.float32) + 5 * _smooth_noise(rng, h, w, 2 * scale, 1)
  thick = max(1, int(round(rng.uniform(1, 2) * scale)))
  dash, gap = rng.uniform(6, 10) * scale, rng.uniform(5, 8) * scale
  on = (np.arange(w) + rng.uniform(0, dash + gap)) % (dash + gap) < dash
  line = _LIGHT if rng.random() < 0.5 else np.array((230, 200, 60), np.float32)
  top = (h - thick) // 2
  band[top:top + thick, on] = line
  return band


def _paste(image: np.ndarray, label: np.ndarray, sprite: Sprite, top: int, left: int, class_id: int) -> None:
  """Draws `sprite` over earlier content, with a 1-pixel ignore outline (clipped at the image border)."""
  h, w = sprite.mask.shape
  size_h, size_w = label.shape
  padded = np.pad(sprite.mask, 1)
  grown = padded.copy()
  grown[1:] |= padded[:-1]
  grown[:-1] |= padded[1:]
  ring = grown.copy()
  ring[:, 1:] |= grown[:, :-1]
  ring[:, :-1] |= grown[:, 1:]
  ring &= ~padded
  y0, x0 = max(top - 1, 0), max(left - 1, 0)
  y1, x1 = min(top + h + 1, size_h), min(left + w + 1, size_w)
  region = label[y0:y1, x0:x1]
  region[ring[y0 - top + 1:y1 - top + 1, x0 - left + 1:x1 - left + 1]] = SYNTHETIC_CONTEXT_INFO.ignore_index
  label[top:top + h, left:left + w][sprite.mask] = class_id
  image[top:top + h, left:left + w][sprite.mask] = sprite.rgb[sprite.mask]


def random_streams(key: Sequence[int]) -> tuple[np.random.Generator, ...]:
  """Independent generators for the scene, the ground, the layout, the band and the finish, from `key`."""
  return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(list(key)).spawn(5))


def draw_scene(scene_rng: np.random.Generator, scene: str | None) -> str:
  if scene is None:
    return SCENES[int(scene_rng.integers(2))]
  if scene not in SCENES:
    raise ValueError(f'scene {scene!r} is not one of {SCENES}')
  return scene


def render_backdrop(ground_rng: np.random.Generator, layout_rng: np.random.Generator, band_rng: np.random.Generator,
                    size: int, scene: str, band_fraction: tuple[float, float] = _BAND_FRACTION
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Ground texture with the scene's band (water or road) along the bottom, its height a fraction of the image's
  drawn from `band_fraction`: float32 (S, S, 3) pixels and their uint8 (S, S) labels."""
  image = _ground(ground_rng, size)
  label = np.full((size, size), GROUND, np.uint8)
  band_h = int(round(size * layout_rng.uniform(*band_fraction)))
  render_band = _water if scene == 'sea' else _road
  image[size - band_h:] = render_band(band_rng, band_h, size, _scale(size))
  label[size - band_h:] = WATER if scene == 'sea' else ROAD
  return image, label


def place_object(image: np.ndarray, label: np.ndarray, class_id: int, layout_rng: np.random.Generator) -> None:
  """Draws an object of `class_id` at a position drawn uniformly among those where it fits whole."""
  size = label.shape[0]
  sprite = render_object(class_id, layout_rng, size)
  h, w = sprite.mask.shape
  top, left = layout_rng.integers(0, size - h + 1), layout_rng.integers(0, size - w + 1)
  _paste(image, label, sprite, int(top), int(left), class_id)


def finish_image(finish_rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
  """Photometric jitter and sensor noise over the whole image, so no colour is exactly repeatable; uint8."""
  gain = finish_rng.uniform(0.9, 1.1, 3).astype(np.float32)
  offset = finish_rng.uniform(-8, 8)
  sigma = finish_rng.uniform(2, 6)
  image = image * gain + offset + sigma * finish_rng.standard_normal(image.shape, dtype=np.float32)
  return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def render_sample(key: Sequence[int], image_size: int, scene: str | None = None
                  ) -> tuple[np.ndarray, np.ndarray, str]:
  """Generates one sample from the non-negative integers `key`.

  Args:
    key: e.g. (seed, split_code(split), index); the same key always gives the same sample.
    image_size: S, the side of the square image.
    scene: 'sea' or 'city' to override the scene drawn from `key`. Everything but the band and the classes of
      paired objects is independent of the scene, so the two renderings of one key differ only there.

  Returns:
    image uint8 (S, S, 3), label uint8 (S, S) (class ids, 255 on object outlines), and the scene.
  """
  scene_rng, ground_rng, layout_rng, band_rng, finish_rng = random_streams(key)
  scene = draw_scene(scene_rng, scene)
  image, label = render_backdrop(ground_rng, layout_rng, band_rng, image_size, scene)
  for _ in range(layout_rng.integers(_NUM_OBJECTS[0], _NUM_OBJECTS[1] + 1)):
    kind = KINDS[layout_rng.choice(len(KINDS), p=_KIND_PROBS)]
    place_object(image, label, CLASS_OF[kind, scene], layout_rng)
  return finish_image(finish_rng, image), label, scene


class SyntheticContextSource:
  """`num_samples` samples of one split, each generated on access from (seed, split, index)."""
  info = SYNTHETIC_CONTEXT_INFO

  def __init__(self, split: str, num_samples: int, image_size: int = 96, seed: int = 0):
    name = self.info.name
    if int(num_samples) < 0:
      raise base.DataError(f'{name}/{split}: num_samples={num_samples} must be >= 0')
    if int(image_size) < MIN_IMAGE_SIZE:
      raise base.DataError(f'{name}/{split}: image_size={image_size} is too small to draw objects; '
                           f'set --config.data.synthetic.image_size to at least {MIN_IMAGE_SIZE}')
    if int(seed) < 0:
      raise base.DataError(f'{name}/{split}: seed={seed} must be >= 0 '
                           '(set --config.data.synthetic.seed to a non-negative integer)')
    self.split = split
    self.num_samples = int(num_samples)
    self.image_size = int(image_size)
    self.seed = int(seed)
    self._split_code = split_code(split)

  def __len__(self) -> int:
    return self.num_samples

  def _key(self, index: int) -> tuple[int, int, int]:
    """The generator key of sample `index`; an IndexError outside the split."""
    index = int(index)
    if not 0 <= index < self.num_samples:
      raise IndexError(f'{self.info.name}/{self.split}: index {index} out of range [0, {self.num_samples})')
    return self.seed, self._split_code, index

  def __getitem__(self, index: int) -> dict:
    """Returns {'image': uint8 (S, S, 3), 'label': uint8 (S, S), 'name': str}."""
    image, label, _ = render_sample(self._key(index), self.image_size)
    return {'image': image, 'label': label, 'name': self.sample_name(index)}

  def sample_name(self, index: int) -> str:
    return f'{self.info.name}/{self.split}/{int(index)}'

  def sample_size(self, index: int) -> tuple[int, int]:
    del index
    return self.image_size, self.image_size

  def __repr__(self) -> str:
    return (f'{type(self).__name__}(split={self.split!r}, num_samples={self.num_samples}, '
            f'image_size={self.image_size}, seed={self.seed})')
