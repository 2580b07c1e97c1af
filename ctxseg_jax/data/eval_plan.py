"""Which image of an eval split goes into which static-shape batch, and at what shape (eval.shape_bucket).

The references run each test image at its own size. Under jit every distinct shape is a compiled program, so
images are batched, and padded. With eval.image_regions (models.layers.valid_region) the padding does not change
a ResNet segmentor's scores (to float rounding; HRNet's internal resizes differ slightly near the border), so
buckets are about compute: the plan groups images of similar size so that little of each batch is padding. Each
image's size after the eval resize is rounded up to a multiple of the bucket, images are ordered by that rounded
size, and each global batch is padded only to the largest rounded size among its own images (its label canvas
likewise, from the original sizes). Compiled programs: one per distinct (image canvas, label canvas) pair.

Without a bucket (shape_bucket 0, or evaluation protocols that resize on the device), the split keeps its order
and every batch has the static shapes data.eval_size / eval label size.
"""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from ctxseg_jax.data import transforms
from ctxseg_jax.data.datasets.base import SegmentationSource, source_task

Shape = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class EvalPlan:
  """The positions of a padded eval split.

  Attributes:
    order: int (P,) with P = batches x global batch: the split index at each position; indices >= the split's
      length are padding samples (ignore labels, never scored).
    global_batch: positions per batch.
    image_canvases: per batch, the (H, W) its images are padded to; None for data.eval_size everywhere.
    label_canvases: per batch, the (H, W) its labels are padded to; None for the eval label size everywhere.
  """
  order: np.ndarray
  global_batch: int
  image_canvases: tuple[Shape, ...] | None = None
  label_canvases: tuple[Shape, ...] | None = None

  @property
  def num_batches(self) -> int:
    return len(self.order) // self.global_batch

  def shapes(self) -> set[tuple[Shape, Shape]]:
    """The distinct (image canvas, label canvas) pairs: the programs an evaluation compiles (None: one)."""
    if self.image_canvases is None:
      return set()
    return set(zip(self.image_canvases, self.label_canvases))


def round_up(size: Shape, bucket: int) -> Shape:
  """Each side of `size` rounded up to a multiple of `bucket`."""
  return tuple(-(-int(s) // bucket) * bucket for s in size)


def sequential_plan(length: int, global_batch: int) -> EvalPlan:
  """The split in its own order, padded to whole batches, at the static eval shapes."""
  num_batches = -(-length // global_batch)
  return EvalPlan(np.arange(num_batches * global_batch), global_batch)


def bucketed_plan(original_sizes: np.ndarray, resized_sizes: np.ndarray, global_batch: int, bucket: int,
                  image_bound: Shape | None = None, label_bound: Shape | None = None) -> EvalPlan:
  """Images ordered by their resized size rounded up to `bucket`, each batch padded to its images' largest rounded
  resized size (image canvas) and largest rounded original size (label canvas), each side at most its bound
  (data.eval_size and the eval label size, which hold every image: rounding never pads past them).

  Args:
    original_sizes: int (N, 2), each image's (h, w).
    resized_sizes: int (N, 2), its (h, w) after the eval resize.
  """
  length = len(original_sizes)
  image_bound = image_bound or (np.iinfo(np.int64).max,) * 2
  label_bound = label_bound or (np.iinfo(np.int64).max,) * 2
  rounded = np.minimum([round_up(s, bucket) for s in resized_sizes], image_bound).reshape(-1, 2)
  order = np.lexsort((np.arange(length), rounded[:, 1], rounded[:, 0]))  # by rounded (h, w), then split order
  num_batches = -(-length // global_batch)
  padded = np.concatenate([order, np.arange(length, num_batches * global_batch)])
  labels = np.minimum([round_up(s, bucket) for s in original_sizes], label_bound).reshape(-1, 2)
  image_canvases, label_canvases = [], []
  for b in range(num_batches):
    members = order[b * global_batch:(b + 1) * global_batch]
    image_canvases.append(tuple(int(v) for v in rounded[members].max(axis=0)))
    label_canvases.append(tuple(int(v) for v in labels[members].max(axis=0)))
  return EvalPlan(padded, global_batch, tuple(image_canvases), tuple(label_canvases))


def sample_size(source: SegmentationSource, index: int) -> Shape:
  """The (h, w) of sample `index`: from the source's `sample_size` where it has one (a file header, a record's
  metadata), else by decoding the sample."""
  if hasattr(source, 'sample_size'):
    return tuple(source.sample_size(index))
  return tuple(source[index]['image'].shape[:2])


def plan(source: SegmentationSource, data_config: ml_collections.ConfigDict, global_batch: int,
         eval_config: ml_collections.ConfigDict | None = None) -> EvalPlan:
  """The plan of config.eval: bucketed for single-scale whole-image evaluation with eval.shape_bucket > 0,
  sequential otherwise and for classification datasets (whole images at data.eval_size). Every process computes the
  same plan (from every image's size)."""
  bucket = (0 if eval_config is None or transforms.resizes_on_device(eval_config)
            or source_task(source) == 'classification' else eval_config.shape_bucket)
  if not bucket:
    return sequential_plan(len(source), global_batch)
  originals = np.asarray([sample_size(source, i) for i in range(len(source))], np.int64).reshape(-1, 2)
  resized = np.asarray([transforms.eval_rescale_size(h, w, tuple(data_config.eval_scale)) for h, w in originals],
                       np.int64).reshape(-1, 2)
  return bucketed_plan(originals, resized, global_batch, bucket, tuple(data_config.eval_size),
                       transforms.eval_label_size(data_config))
