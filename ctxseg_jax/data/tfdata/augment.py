"""Training augmentation in graph, following `transforms.TrainAugment`: rescale the long side to base_size * r,
r ~ U(ratio_range), optionally capping the short side at base_short_side * r, with the same float64 size
arithmetic; a random crop of at most crop_size; flip p = 0.5; then padding bottom/right to the crop size with
image_pad_value / 255 (mmseg's order: the padding is never flipped or distorted). Plus:

  * cat_max_ratio < 1: mmseg's RandomCrop rule: the first crop and up to 10 re-draws, keeping the first whose
    largest class covers less than cat_max_ratio of its non-ignore pixels and that holds at least two classes;
    when none of the first 10 passes, the 11th draw is kept unchecked.
  * photometric_distortion: mmseg's PhotoMetricDistortion after the flip (`distortion`), on the image area only.

Resizing computes only the crop window (`resample.resize_window`, which also says how it differs from PIL).
"""
from __future__ import annotations

import dataclasses

import ml_collections
import tensorflow as tf

from ctxseg_jax.data import transforms
from ctxseg_jax.data.tfdata import distortion
from ctxseg_jax.data.tfdata import draws
from ctxseg_jax.data.tfdata import resample

_CROP_DRAWS = 11  # mmseg RandomCrop: the first crop and up to 10 re-draws

@dataclasses.dataclass(frozen=True)
class TrainAugment:
  """`transforms.TrainAugment` in TF ops (see the module docstring), with cat_max_ratio and photometric
  distortion; every draw comes from stateless ops keyed by the sample's key."""
  base_size: int
  ratio_range: tuple[float, float]
  crop_size: tuple[int, int]
  flip: bool
  image_pad_value: tuple[int, int, int]
  base_short_side: int = 0
  cat_max_ratio: float = 1.0
  photometric_distortion: bool = False

  @classmethod
  def from_config(cls, data_config: ml_collections.ConfigDict) -> TrainAugment:
    return cls(base_size=data_config.base_size, ratio_range=tuple(data_config.ratio_range),
               crop_size=tuple(data_config.crop_size), flip=data_config.flip,
               image_pad_value=tuple(data_config.image_pad_value), base_short_side=data_config.base_short_side,
               cat_max_ratio=data_config.cat_max_ratio, photometric_distortion=data_config.photometric_distortion)

  def scaled_size(self, height: tf.Tensor, width: tf.Tensor, ratio: tf.Tensor) -> tf.Tensor:
    """int32 (2,): the rescaled (height, width), with TrainAugment's float64 arithmetic (round half to even)."""
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    long_side = tf.maximum(tf.round(self.base_size * ratio), 1.0)
    scale = long_side / tf.maximum(h, w)
    if self.base_short_side > 0:
      scale = tf.minimum(scale, tf.maximum(tf.round(self.base_short_side * ratio), 1.0) / tf.minimum(h, w))
    return tf.cast(tf.stack([tf.maximum(tf.round(h * scale), 1.0), tf.maximum(tf.round(w * scale), 1.0)]),
                   tf.int32)

  def _crop_corner(self, label: tf.Tensor, size: tf.Tensor, key: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    crop_h, crop_w = self.crop_size
    count = _CROP_DRAWS if self.cat_max_ratio < 1 else 1
    tops = draws.uniform(key, draws.TOP, 0, tf.maximum(size[0], crop_h) - crop_h + 1, tf.int32, (count,))
    lefts = draws.uniform(key, draws.LEFT, 0, tf.maximum(size[1], crop_w) - crop_w + 1, tf.int32, (count,))
    if count == 1:
      return tops[0], lefts[0]

    def rejected(i):
      window = resample.label_window(label, size, tops[i], lefts[i], self.crop_size)
      counts = tf.math.bincount(tf.cast(window, tf.int32), minlength=256, maxlength=256)[:transforms.IGNORE]
      classes = tf.math.count_nonzero(counts)
      share = tf.cast(tf.reduce_max(counts), tf.float64) / tf.cast(tf.maximum(tf.reduce_sum(counts), 1), tf.float64)
      return tf.logical_not(tf.logical_and(classes > 1, share < self.cat_max_ratio))

    chosen = tf.while_loop(lambda i: tf.logical_and(i < count - 1, rejected(i)), lambda i: i + 1, [tf.constant(0)])
    return tops[chosen], lefts[chosen]

  def __call__(self, image: tf.Tensor, label: tf.Tensor, key: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8 (H, W, 3), uint8 (H, W), the sample's key -> uint8 (crop_h, crop_w, 3), uint8 (crop_h, crop_w)."""
    ratio = draws.uniform(key, draws.RATIO, self.ratio_range[0], self.ratio_range[1], tf.float64)
    size = self.scaled_size(tf.shape(label)[0], tf.shape(label)[1], ratio)
    top, left = self._crop_corner(label, size, key)
    pad_value = tf.constant(self.image_pad_value, tf.uint8)
    image, label = resample.resize_window(image, label, size, top, left, self.crop_size,
                                         self.image_pad_value)
    crop_h, crop_w = self.crop_size
    valid_h, valid_w = tf.minimum(size[0] - top, crop_h), tf.minimum(size[1] - left, crop_w)
    if self.flip:  # mirror the image area only: the padding stays bottom/right
      columns = tf.range(crop_w)
      mirrored = tf.where(columns < valid_w, valid_w - 1 - columns, columns)
      flip = draws.coin(key, draws.FLIP)
      image = tf.cond(flip, lambda: tf.gather(image, mirrored, axis=1), lambda: image)
      label = tf.cond(flip, lambda: tf.gather(label, mirrored, axis=1), lambda: label)
    if self.photometric_distortion:
      inside = (tf.range(crop_h) < valid_h)[:, None] & (tf.range(crop_w) < valid_w)[None, :]
      image = tf.where(inside[..., None], distortion.random_distort(image, key), pad_value)
    return tf.ensure_shape(image, [crop_h, crop_w, 3]), tf.ensure_shape(label, [crop_h, crop_w])
