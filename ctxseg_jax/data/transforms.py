"""Host-side (numpy) sample transforms: the references' training augmentation and static-shape eval padding, for
segmentation and (`ClassificationAugment`, `ClassificationEvalPreprocess`) image classification.

Images stay uint8 until the device normalises them (4x less host work and transfer than float32); label maps stay
uint8 with the ignore value 255 in padded areas.
"""
from __future__ import annotations

import dataclasses
import math

import grain
import numpy as np
from PIL import Image

from ctxseg_jax.data import photometric
from ctxseg_jax.data.datasets.base import IGNORE_INDEX, DataError
from ctxseg_jax.models.layers.resize import linear_taps

IGNORE = IGNORE_INDEX


def resize_linear(image: np.ndarray, size: tuple[int, int],
                  window: tuple[slice, slice] | None = None) -> np.ndarray:
  """Bilinear resize without antialiasing, like OpenCV's INTER_LINEAR (mmseg): uint8 (H, W, C) -> (height, width, C).

  With `window` (rows, columns of the (height, width) output), only that part of the output is computed: exactly
  `resize_linear(image, size)[window]`, at the cost of the window alone (a training crop of an enlarged image).

  Separable: along each axis, output pixel dst mixes the two source pixels around
  src = (dst + 0.5) * in / out - 0.5, clamped at 0 and at the last index, with weights 1 - frac and frac
  (`linear_taps` with align_corners=False: OpenCV's sample positions and weights). Only those two pixels count,
  however much the image shrinks. Values are interpolated in float32 and rounded half up to uint8. OpenCV
  computes uint8 in fixed point (11-bit weights, truncating products): about one of its pixels in eight is one
  grey level lower than here, a few in a thousand one higher, none further apart; an exact 2x reduction
  (OpenCV's INTER_AREA shortcut) is equal.
  """
  height, width = size
  window = window or (slice(None), slice(None))
  out = image
  # Resample the axis that shrinks the intermediate the most first (decided on the whole output, so that a window
  # is computed in the same order as the whole image).
  axes = (0, 1) if height * image.shape[1] <= image.shape[0] * width else (1, 0)
  for axis in axes:
    lo, hi, frac = (taps[window[axis]] for taps in linear_taps(image.shape[axis], size[axis], align_corners=False))
    frac = frac.reshape((-1,) + (1,) * (out.ndim - 1 - axis))
    low = np.take(out, lo, axis).astype(np.float32)
    out = np.take(out, hi, axis).astype(np.float32)
    out -= low
    out *= frac
    out += low
  out += np.float32(0.5)
  return np.floor(out, out=out).astype(np.uint8)


def resize_image(image: np.ndarray, size: tuple[int, int], antialias: bool) -> np.ndarray:
  """Resizes a uint8 (H, W, 3) image to (height, width), bilinear: with antialias, PIL's BILINEAR, which widens
  its filter when shrinking (PyTorch-Encoding, HRNet); without, `resize_linear` (OpenCV INTER_LINEAR, mmseg).
  Upscaling agrees between the two up to rounding (PIL also works in fixed point)."""
  if image.shape[:2] == tuple(size):
    return image
  if not antialias:
    return resize_linear(image, size)
  return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes a uint8 (H, W) label to (height, width) with PIL's NEAREST.

  PIL's NEAREST takes src = floor((dst + 0.5) * in / out) (the lower pixel where that is an exact integer), the
  pixel whose centre is nearest, so labels stay aligned with the half-pixel image resize in both modes. OpenCV's
  INTER_NEAREST (mmseg's labels) takes floor(dst * in / out), half an output pixel up-left of that; this shift is
  not reproduced.
  """
  if label.shape == tuple(size):
    return label
  return np.asarray(Image.fromarray(label).resize((size[1], size[0]), Image.NEAREST))


def pad_image(image: np.ndarray, size: tuple[int, int], value) -> np.ndarray:
  """Pads a (h, w, 3) image bottom/right up to at least (height, width) with `value` (one int, or one per
  channel)."""
  height, width = max(size[0], image.shape[0]), max(size[1], image.shape[1])
  if (height, width) == image.shape[:2]:
    return image
  out = np.empty((height, width, 3), np.uint8)
  out[...] = np.asarray(value, np.uint8)
  out[:image.shape[0], :image.shape[1]] = image
  return out


def pad_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Pads a (h, w) label bottom/right with ignore up to at least (height, width)."""
  pad_h, pad_w = max(size[0] - label.shape[0], 0), max(size[1] - label.shape[1], 0)
  if pad_h == 0 and pad_w == 0:
    return label
  return np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE)


def crop_with_cat_max_ratio(label: np.ndarray, crop_size: tuple[int, int], cat_max_ratio: float,
                            rng: np.random.Generator) -> tuple[int, int]:
  """Draws the (top, left) of a crop of at most crop_size inside a (H, W) label.

  With cat_max_ratio < 1 the crop is re-drawn up to 10 times while one class covers cat_max_ratio or more of the
  crop's non-ignored pixels, or fewer than two classes are present; the last draw is kept (mmseg RandomCrop).
  """
  crop_h, crop_w = min(crop_size[0], label.shape[0]), min(crop_size[1], label.shape[1])
  draw = lambda: (int(rng.integers(0, label.shape[0] - crop_h + 1)), int(rng.integers(0, label.shape[1] - crop_w + 1)))
  top, left = draw()
  if cat_max_ratio < 1:
    for _ in range(10):
      counts = np.bincount(label[top:top + crop_h, left:left + crop_w].reshape(-1), minlength=256)
      counts[IGNORE] = 0
      counts = counts[counts > 0]
      if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
        break
      top, left = draw()
  return top, left


@dataclasses.dataclass(frozen=True)
class TrainAugment(grain.transforms.RandomMap):
  """Random rescale -> random crop -> flip -> optional photometric distortion -> pad to the crop size.

  This is mmseg's order (RandomResize, RandomCrop, RandomFlip, PhotoMetricDistortion, then padding to the crop
  size), and PyTorch-Encoding's up to the order of flip and crop, which commute in distribution. The long side
  is rescaled to base_size * r, r ~ U(ratio_range) (or, with ratio_step > 0, r = low + ratio_step * k with k
  uniform over the steps within the range, as HRNet draws 0.5 + k / 10), keeping the aspect ratio; with
  base_short_side > 0 the scale is also capped so that the short side is at most base_short_side * r (mmseg's
  keep-ratio RandomResize with scale (base_size, base_short_side)). The crop is at most crop_size (an image
  smaller than the crop is taken whole); cat_max_ratio < 1 re-draws crops dominated by one class (mmseg
  RandomCrop). Padding goes bottom/right
  (image: image_pad_value, label: ignore), after the flip and the distortion, so padded pixels are never moved
  or distorted. The rescale resamples the image with `resize_image` (resize_antialias: PIL's antialiasing
  bilinear, else OpenCV-like, then computed for the crop window alone) and the label nearest (`resize_label`).
  Output: {'image': uint8 (crop_h, crop_w, 3), 'label': uint8 (crop_h, crop_w)}.
  """
  base_size: int
  ratio_range: tuple[float, float]
  crop_size: tuple[int, int]
  flip: bool
  image_pad_value: int | tuple[int, int, int]
  base_short_side: int = 0
  cat_max_ratio: float = 1.0
  photometric_distortion: bool = False
  resize_antialias: bool = True
  ratio_step: float = 0.0

  @classmethod
  def from_config(cls, data_config) -> TrainAugment:
    """The augmentation of config.data."""
    return cls(base_size=data_config.base_size, ratio_range=tuple(data_config.ratio_range),
               ratio_step=data_config.ratio_step, crop_size=tuple(data_config.crop_size), flip=data_config.flip,
               image_pad_value=data_config.image_pad_value, base_short_side=data_config.base_short_side,
               cat_max_ratio=data_config.cat_max_ratio, photometric_distortion=data_config.photometric_distortion,
               resize_antialias=data_config.resize_antialias)

  def random_map(self, sample: dict, rng: np.random.Generator) -> dict:
    image, label = sample['image'], sample['label']
    low, high = self.ratio_range
    if self.ratio_step > 0:
      ratio = low + self.ratio_step * int(rng.integers(0, int(round((high - low) / self.ratio_step)) + 1))
    else:
      ratio = rng.uniform(low, high)
    long_side = max(int(round(self.base_size * ratio)), 1)
    height, width = image.shape[:2]
    scale = long_side / max(height, width)
    if self.base_short_side > 0:
      scale = min(scale, max(int(round(self.base_short_side * ratio)), 1) / min(height, width))
    size = (max(int(round(height * scale)), 1), max(int(round(width * scale)), 1))
    if self.resize_antialias:
      image = resize_image(image, size, antialias=True)
    label = resize_label(label, size)
    top, left = crop_with_cat_max_ratio(label, self.crop_size, self.cat_max_ratio, rng)
    window = (slice(top, top + self.crop_size[0]), slice(left, left + self.crop_size[1]))
    image = image[window] if self.resize_antialias else resize_linear(image, size, window)
    label = label[window]
    if self.flip and rng.random() < 0.5:
      image, label = image[:, ::-1], label[:, ::-1]
    image = np.ascontiguousarray(image)
    if self.photometric_distortion:
      image = photometric.photometric_distortion(image, rng)
    return {'image': pad_image(image, self.crop_size, self.image_pad_value),
            'label': pad_label(np.ascontiguousarray(label), self.crop_size)}


def eval_rescale_size(height: int, width: int, eval_scale: tuple[int, int]) -> tuple[int, int]:
  """(h, w) after the keep-ratio eval resize: factor min(long / long side, short / short side), rounded half up
  (mmcv rescale_size); eval_scale (0, 0) keeps the size."""
  if not any(eval_scale):
    return height, width
  long_bound, short_bound = max(eval_scale), min(eval_scale)
  factor = min(long_bound / max(height, width), short_bound / min(height, width))
  return int(height * factor + 0.5), int(width * factor + 0.5)


SCALE_RULES = ('mmseg', 'hrnet', 'hrnet_520', 'pte')


def scaled_size(height: int, width: int, scale: float, rule: str, *, eval_scale: tuple[int, int],
                base_size: int) -> tuple[int, int]:
  """The (h, w) at which a multi-scale evaluation runs an original (height, width) image at `scale`, by `rule`:

    'mmseg' (MultiScaleFlipAug): the keep-ratio eval resize to eval_scale x scale (each bound truncated, as
      int(bound * scale)); without an eval_scale, each side x scale rounded half up.
    'hrnet' (multi_scale_aug): long side int(base_size x scale + 0.5), short side in proportion, rounded half up;
      'hrnet_520' the same, of the testval image (`testval_fit`) rather than the original.
    'pte' (MultiEvalModule): long side ceil(base_size x scale), short side in proportion, rounded half up.
  """
  if rule == 'mmseg':
    if any(eval_scale):
      return eval_rescale_size(height, width, (int(eval_scale[0] * scale), int(eval_scale[1] * scale)))
    return int(height * scale + 0.5), int(width * scale + 0.5)
  if rule not in SCALE_RULES:
    raise ValueError(f'scale rule {rule!r} is not supported; choose one of {list(SCALE_RULES)}')
  long_side = int(math.ceil(base_size * scale)) if rule == 'pte' else int(base_size * scale + 0.5)
  if height > width:
    return long_side, int(width * long_side / height + 0.5)
  return int(height * long_side / width + 0.5), long_side


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
  """(h, w) with the short side `short_side` and the long side int(long x short_side / short + 0.5) (HRNet
  resize_short_length: a square image's width counts as its short side); short_side 0 keeps the size."""
  if not short_side:
    return height, width
  if height < width:
    return short_side, int(width * short_side / height + 0.5)
  return int(height * short_side / width + 0.5), short_side


def fit_size(size, stride: int):
  """A size rounded up to a multiple of `stride` (HRNet resize_short_length's fit_stride padding): an int, or an
  int array (e.g. (B, 2) sizes on device)."""
  return -(-size // stride) * stride


def testval_fit(height: int, width: int, short_side: int, fit_stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """HRNet's 520-pixel testval item for an original (height, width) image: the size it is resized to (short side
  `short_side`, `short_side_size`) and that size padded bottom/right to a multiple of fit_stride."""
  resized = short_side_size(height, width, short_side)
  return resized, (fit_size(resized[0], fit_stride), fit_size(resized[1], fit_stride))


def resizes_on_device(eval_config) -> bool:
  """Whether evaluation resizes images on device, from the originals (or, 'hrnet_520', from its testval images):
  for anything but single-scale, unflipped, whole-image inference (which runs on the image the host resized to
  data.eval_scale)."""
  return eval_config.mode != 'whole' or tuple(eval_config.scales) != (1.0,) or bool(eval_config.flip)


def scale_canvas(eval_size: tuple[int, int], scale: float, rule: str = 'mmseg', base_size: int = 0) -> tuple[int, int]:
  """The static (H, W) that holds every image of a split evaluated at `scale`: eval_size x scale (eval_size at
  scale 1); by the 'hrnet_520' rule, whose long side is always base_size x scale, that long side squared."""
  if rule == 'hrnet_520':
    return (int(base_size * scale + 0.5),) * 2
  return int(math.ceil(eval_size[0] * scale)), int(math.ceil(eval_size[1] * scale))


@dataclasses.dataclass(frozen=True)
class EvalPreprocess(grain.transforms.Map):
  """Keep-ratio resize of the image (eval_scale, or native; `resize_image` with resize_antialias), then padding
  to static shapes.

  The label keeps its original resolution (predictions are resized back to it before scoring) and is padded
  with ignore to label_size. Output: {'image': uint8 (*eval_size, 3), 'label': uint8 label_size,
  'image_size': int32 (2,) the resized (h, w) before padding, 'original_size': int32 (2,) the original (h, w)},
  and the sample's 'index' (int32) when it has one. The label is optional: an unlabelled sample (images to
  predict) gives the same dict without 'label'.

  With `scales` (multi-scale, sliding or flipped evaluation: the device resizes), the image is not resized: it is
  the original padded to label_size, 'image_size' is the original size, and 'scale_sizes' int32 (S, 2) holds the
  (h, w) of each scale by `scale_rule` (see `scaled_size`), each within scale_canvas(eval_size, scale).
  By the 'hrnet_520' rule the image is HRNet's testval item instead (`testval_fit`): resized without antialiasing
  (OpenCV INTER_LINEAR, `resize_linear`) to short side `short_side` (0: not resized), padded bottom/right with
  fit_pad_value to a multiple of fit_stride, then with image_pad_value to eval_size; 'image_size' is its size
  before the fit_stride padding, and the scales are of the padded size.

  A sample may carry its batch's 'canvas' and 'label_canvas' (data.eval_plan, bucketed shapes): the image and the
  label are then padded to those instead of eval_size and label_size.
  """
  eval_size: tuple[int, int]
  label_size: tuple[int, int]
  eval_scale: tuple[int, int]
  image_pad_value: int | tuple[int, int, int]
  resize_antialias: bool = True
  scales: tuple[float, ...] = ()
  scale_rule: str = 'mmseg'
  base_size: int = 0
  short_side: int = 0
  fit_stride: int = 1
  fit_pad_value: int | tuple[int, int, int] = 0

  @classmethod
  def from_config(cls, data_config, eval_config=None) -> EvalPreprocess:
    """From config.data and, for the protocols that resize on device (`resizes_on_device`), config.eval."""
    on_device = eval_config is not None and resizes_on_device(eval_config)
    testval = on_device and eval_config.combine == 'hrnet_520'
    return cls(tuple(data_config.eval_size), eval_label_size(data_config), tuple(data_config.eval_scale),
               data_config.image_pad_value, data_config.resize_antialias,
               scales=tuple(eval_config.scales) if on_device else (),
               scale_rule=eval_config.combine if on_device else 'mmseg', base_size=data_config.base_size,
               short_side=eval_config.short_side if testval else 0,
               fit_stride=eval_config.fit_stride if testval else 1,
               fit_pad_value=tuple(int(np.rint(m)) for m in data_config.mean))

  def source_size(self, height: int, width: int) -> tuple[int, int]:
    """The (h, w) the scales resize from: the original's, or by the 'hrnet_520' rule its testval image's."""
    if self.scale_rule != 'hrnet_520':
      return height, width
    return testval_fit(height, width, self.short_side, self.fit_stride)[1]

  def sizes_at_scales(self, height: int, width: int) -> list[tuple[int, int]]:
    """The (h, w) of an original (height, width) image at each of `scales`."""
    source = self.source_size(height, width)
    return [scaled_size(*source, s, self.scale_rule, eval_scale=self.eval_scale, base_size=self.base_size)
            for s in self.scales]

  def shape_problems(self, name: str, height: int, width: int) -> list[str]:
    """Why an eval sample with an original (height, width) label does not fit the static eval shapes, if it
    does not: each problem names the sample and the config key to raise."""
    problems = []
    if height > self.label_size[0] or width > self.label_size[1]:
      key = 'eval_label_size' if tuple(self.label_size) != tuple(self.eval_size) or any(self.eval_scale) \
          else 'eval_size'
      problems.append(f'{name}: label is {height}x{width} (HxW), larger than the padded eval label size '
                      f'{tuple(self.label_size)}; set --config.data.{key} to at least the largest image size of '
                      'the eval split')
    if self.scale_rule == 'hrnet_520':
      source = self.source_size(height, width)
      if source[0] > self.eval_size[0] or source[1] > self.eval_size[1]:
        problems.append(f'{name}: image is {source[0]}x{source[1]} (HxW) resized to short side {self.short_side} '
                        f'and padded to a multiple of {self.fit_stride}, larger than config.data.eval_size='
                        f'{tuple(self.eval_size)}; set --config.data.eval_size to at least that size')
    if self.scales:
      for scale, size in zip(self.scales, self.sizes_at_scales(height, width)):
        canvas = scale_canvas(self.eval_size, scale, self.scale_rule, self.base_size)
        if size[0] > canvas[0] or size[1] > canvas[1]:
          problems.append(f'{name}: image is {size[0]}x{size[1]} (HxW) at scale {scale} ({self.scale_rule} rule), '
                          f'larger than config.data.eval_size={tuple(self.eval_size)} x {scale} = {canvas}; set '
                          '--config.data.eval_size to at least the largest image size of the eval split at scale 1')
      return problems
    resized = eval_rescale_size(height, width, self.eval_scale)
    if resized[0] > self.eval_size[0] or resized[1] > self.eval_size[1]:
      problems.append(f'{name}: image is {resized[0]}x{resized[1]} (HxW) after the eval resize, larger than '
                      f'config.data.eval_size={tuple(self.eval_size)}; set --config.data.eval_size to at least the '
                      'largest (resized) image size of the eval split')
    return problems

  def map(self, sample: dict) -> dict:
    image, label = sample['image'], sample.get('label')
    height, width = image.shape[:2]
    problems = self.shape_problems(sample.get('name', 'sample'), height, width)
    if problems:
      raise DataError(problems[0])
    label_size = tuple(sample.get('label_canvas', self.label_size))
    if self.scale_rule == 'hrnet_520':
      resized, fitted = testval_fit(height, width, self.short_side, self.fit_stride)
      image = pad_image(resize_image(image, resized, antialias=False), fitted, self.fit_pad_value)
      out = {'image': pad_image(image, self.eval_size, self.image_pad_value),
             'image_size': np.asarray(resized, np.int32),
             'scale_sizes': np.asarray(self.sizes_at_scales(height, width), np.int32)}
    elif self.scales:
      out = {'image': pad_image(image, label_size, self.image_pad_value),
             'image_size': np.asarray((height, width), np.int32),
             'scale_sizes': np.asarray(self.sizes_at_scales(height, width), np.int32)}
    else:
      resized = eval_rescale_size(height, width, self.eval_scale)
      out = {'image': pad_image(resize_image(image, resized, self.resize_antialias),
                                tuple(sample.get('canvas', self.eval_size)), self.image_pad_value),
             'image_size': np.asarray(resized, np.int32)}
    out['original_size'] = np.asarray((height, width), np.int32)
    if label is not None:
      out['label'] = pad_label(label, label_size)
    if 'index' in sample:
      out['index'] = np.int32(sample['index'])
    return out


def eval_label_size(data_config) -> tuple[int, int]:
  """The padded size of eval labels: config.data.eval_label_size, or eval_size when that is (0, 0)."""
  return tuple(data_config.eval_label_size) if any(data_config.eval_label_size) else tuple(data_config.eval_size)


@dataclasses.dataclass(frozen=True)
class ClassificationAugment(grain.transforms.RandomMap):
  """The CIFAR training augmentation (torchvision RandomCrop(size, padding) then RandomHorizontalFlip, as
  PyTorch-Encoding's CIFAR-10 loader): `padding` pixels of image_pad_value on every side, a random crop_size window
  of that (an image still smaller than the crop is padded bottom/right to it), a horizontal flip with p = 0.5.
  Output: {'image': uint8 (crop_h, crop_w, 3), 'label': the sample's class id}.
  """
  crop_size: tuple[int, int]
  padding: int
  flip: bool
  image_pad_value: int | tuple[int, int, int]

  def random_map(self, sample: dict, rng: np.random.Generator) -> dict:
    image, p = sample['image'], self.padding
    if p:
      height, width = image.shape[:2]
      padded = np.empty((height + 2 * p, width + 2 * p, 3), np.uint8)
      padded[...] = np.asarray(self.image_pad_value, np.uint8)
      padded[p:p + height, p:p + width] = image
      image = padded
    image = pad_image(image, self.crop_size, self.image_pad_value)
    top = int(rng.integers(0, image.shape[0] - self.crop_size[0] + 1))
    left = int(rng.integers(0, image.shape[1] - self.crop_size[1] + 1))
    image = image[top:top + self.crop_size[0], left:left + self.crop_size[1]]
    if self.flip and rng.random() < 0.5:
      image = image[:, ::-1]
    return {'image': np.ascontiguousarray(image), 'label': sample['label']}


@dataclasses.dataclass(frozen=True)
class ClassificationEvalPreprocess(grain.transforms.Map):
  """Evaluation of a classifier: the image as it is, padded bottom/right with image_pad_value to the static
  eval_size. Output: {'image': uint8 (*eval_size, 3), 'label': its class id (when the sample has one), 'index':
  int32 (when it has one)}."""
  eval_size: tuple[int, int]
  image_pad_value: int | tuple[int, int, int]

  def shape_problems(self, name: str, height: int, width: int) -> list[str]:
    """Why an image of (height, width) does not fit eval_size, if it does not."""
    if height <= self.eval_size[0] and width <= self.eval_size[1]:
      return []
    return [f'{name}: image is {height}x{width} (HxW), larger than config.data.eval_size={tuple(self.eval_size)}; '
            'set --config.data.eval_size to at least the largest image size of the eval split']

  def map(self, sample: dict) -> dict:
    image = sample['image']
    problems = self.shape_problems(sample.get('name', 'sample'), *image.shape[:2])
    if problems:
      raise DataError(problems[0])
    out = {'image': pad_image(image, self.eval_size, self.image_pad_value)}
    if 'label' in sample:
      out['label'] = np.int32(sample['label'])
    if 'index' in sample:
      out['index'] = np.int32(sample['index'])
    return out
