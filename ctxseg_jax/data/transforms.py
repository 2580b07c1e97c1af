"""Host-side (numpy) sample transforms: the references' training augmentation and static-shape eval padding.

Images stay uint8 until the device normalises them (4x less host work and transfer than float32); labels stay
uint8 with the ignore value 255 in padded areas.
"""
from __future__ import annotations

import dataclasses

import grain
import numpy as np
from PIL import Image

from ctxseg_jax.data.datasets.base import DataError

IGNORE = 255


def resize(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """Resizes to (height, width): image bilinear (PIL, as PyTorch-Encoding), label nearest."""
  height, width = size
  if image.shape[:2] == (height, width):
    return image, label
  image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
  label = np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))
  return image, label


def pad_to(image: np.ndarray, label: np.ndarray, size: tuple[int, int],
           image_pad_value: int) -> tuple[np.ndarray, np.ndarray]:
  """Pads bottom/right up to at least (height, width): image with image_pad_value, label with ignore."""
  pad_h, pad_w = max(size[0] - image.shape[0], 0), max(size[1] - image.shape[1], 0)
  if pad_h == 0 and pad_w == 0:
    return image, label
  image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=image_pad_value)
  label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE)
  return image, label


@dataclasses.dataclass(frozen=True)
class TrainAugment(grain.transforms.RandomMap):
  """Random rescale -> pad -> random crop -> random horizontal flip (PyTorch-Encoding/HRNet order).

  The long side is rescaled to base_size * r, r ~ U(ratio_range), keeping the aspect ratio; with
  base_short_side > 0 the scale is also capped so that the short side is at most base_short_side * r (mmseg's
  keep-ratio RandomResize with scale (base_size, base_short_side)). Images smaller than the crop are padded
  (image: image_pad_value, label: ignore). Output: {'image': uint8 (crop_h, crop_w, 3), 'label': uint8 (crop_h,
  crop_w)}.
  """
  base_size: int
  ratio_range: tuple[float, float]
  crop_size: tuple[int, int]
  flip: bool
  image_pad_value: int
  base_short_side: int = 0

  def random_map(self, sample: dict, rng: np.random.Generator) -> dict:
    image, label = sample['image'], sample['label']
    ratio = rng.uniform(*self.ratio_range)
    long_side = max(int(round(self.base_size * ratio)), 1)
    height, width = image.shape[:2]
    scale = long_side / max(height, width)
    if self.base_short_side > 0:
      scale = min(scale, max(int(round(self.base_short_side * ratio)), 1) / min(height, width))
    image, label = resize(image, label, (max(int(round(height * scale)), 1), max(int(round(width * scale)), 1)))
    image, label = pad_to(image, label, self.crop_size, self.image_pad_value)
    crop_h, crop_w = self.crop_size
    top = rng.integers(0, image.shape[0] - crop_h + 1)
    left = rng.integers(0, image.shape[1] - crop_w + 1)
    image = image[top:top + crop_h, left:left + crop_w]
    label = label[top:top + crop_h, left:left + crop_w]
    if self.flip and rng.random() < 0.5:
      image, label = image[:, ::-1], label[:, ::-1]
    return {'image': np.ascontiguousarray(image), 'label': np.ascontiguousarray(label)}


@dataclasses.dataclass(frozen=True)
class EvalPad(grain.transforms.Map):
  """Pads each sample to the static eval size; labels of padded areas are ignore, so metrics are unaffected."""
  eval_size: tuple[int, int]
  image_pad_value: int

  def map(self, sample: dict) -> dict:
    image, label = sample['image'], sample['label']
    if image.shape[0] > self.eval_size[0] or image.shape[1] > self.eval_size[1]:
      raise DataError(f'{sample.get("name", "sample")}: image is {image.shape[0]}x{image.shape[1]} (HxW), larger '
                      f'than config.data.eval_size={tuple(self.eval_size)}; set --config.data.eval_size to at '
                      f'least the largest image size of the eval split')
    image, label = pad_to(image, label, self.eval_size, self.image_pad_value)
    return {'image': image, 'label': label}
