"""Segmentation metrics: a confusion matrix built on device, and mIoU / mAcc / aAcc computed from it on the host;
boundary mIoU from confusion matrices restricted to trimaps around the label boundaries. Classification metrics
(top-1 accuracy and error, per-class accuracy) from the same confusion matrix, over images.

Two published mIoU conventions exist and both are reported, named:
  - 'present' (mmseg IoUMetric): mean over classes whose union is non-zero (nanmean);
  - 'all' (HRNet, PyTorch-Encoding): mean over all classes, a class absent from predictions and labels counts 0.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ctxseg_jax.ops.dilation import within_distance


def confusion_matrix(predictions: jax.Array, labels: jax.Array, num_classes: int, ignore_index: int) -> jax.Array:
  """Counts (label, prediction) pairs over valid pixels.

  Args:
    predictions: int (B, H, W) predicted class ids.
    labels: int (B, H, W) ground truth; pixels equal to ignore_index (or outside 0..K-1) are not counted.
  Returns:
    int32 (K, K) matrix, rows = ground truth, columns = prediction.
  """
  labels = labels.astype(jnp.int32)
  valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
  index = jnp.where(valid, labels * num_classes + predictions.astype(jnp.int32), 0)
  counts = jnp.bincount(index.reshape(-1), weights=valid.reshape(-1).astype(jnp.int32),
                        length=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def label_boundaries(labels: jax.Array, original_size: jax.Array) -> jax.Array:
  """bool (B, H, W): the pixels inside each image (its top-left original_size) whose label differs from one of
  their 8 neighbours inside the image. The ignore label counts as a label (void regions have boundaries); the
  padding around an image does not."""
  height, width = labels.shape[1:]
  inside = ((jnp.arange(height)[None, :, None] < original_size[:, :1, None])
            & (jnp.arange(width)[None, None, :] < original_size[:, 1:, None]))
  padded_labels = jnp.pad(labels.astype(jnp.int32), ((0, 0), (1, 1), (1, 1)))
  padded_inside = jnp.pad(inside, ((0, 0), (1, 1), (1, 1)))
  boundary = jnp.zeros(labels.shape, bool)
  for dy in (-1, 0, 1):
    for dx in (-1, 0, 1):
      if dy or dx:
        neighbour = padded_labels[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
        neighbour_inside = padded_inside[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
        boundary |= neighbour_inside & (neighbour != labels)
  return boundary & inside


def boundary_confusions(predictions: jax.Array, labels: jax.Array, original_size: jax.Array, widths: Sequence[int],
                        num_classes: int, ignore_index: int) -> jax.Array:
  """int32 (len(widths), K, K): per width w, the confusion matrix of the pixels within Euclidean distance w of a
  label boundary (`label_boundaries`): the trimaps of boundary mIoU."""
  boundary = label_boundaries(labels, original_size)
  return jnp.stack([confusion_matrix(predictions, jnp.where(within_distance(boundary, w), labels, ignore_index),
                                     num_classes, ignore_index) for w in widths])


class ConfusionAccumulator:
  """Sums per-batch device confusion matrices without int32 overflow.

  Batches are added on device (no host round trip per batch); the device sum is moved into an int64 host total
  just before it could exceed int32, which the host knows from the static number of pixels per batch.
  """

  def __init__(self, num_classes: int):
    self.num_classes = num_classes
    self._host_total = np.zeros((num_classes, num_classes), np.int64)
    self._device_sum = None
    self._device_pixels = 0

  def add(self, batch_confusion: jax.Array, max_pixels: int) -> None:
    """Adds a (K, K) device matrix that counts at most `max_pixels` pixels."""
    if self._device_sum is not None and self._device_pixels + max_pixels >= np.iinfo(np.int32).max:
      self._flush()
    self._device_sum = batch_confusion if self._device_sum is None else self._device_sum + batch_confusion
    self._device_pixels += max_pixels

  def _flush(self) -> None:
    if self._device_sum is not None:
      self._host_total += np.asarray(jax.device_get(self._device_sum), np.int64)
    self._device_sum, self._device_pixels = None, 0

  def result(self) -> np.ndarray:
    """The int64 (K, K) total so far."""
    self._flush()
    return self._host_total.copy()


MIOU_CONVENTIONS = ('present', 'all')


def segmentation_metrics(confusion: np.ndarray, class_names: Sequence[str],
                         miou_convention: str = 'present') -> dict[str, float]:
  """Metrics in percent from a (K, K) confusion matrix (rows ground truth, columns prediction).

  Returns keys: miou (by `miou_convention`), miou_present, miou_all, macc, aacc, and per class
  'iou/<name>', 'acc/<name>' (NaN for a class with no union / no ground-truth pixels).
  """
  confusion = np.asarray(confusion, np.float64)
  intersection = np.diag(confusion)
  label_area = confusion.sum(axis=1)
  pred_area = confusion.sum(axis=0)
  union = label_area + pred_area - intersection
  with np.errstate(divide='ignore', invalid='ignore'):
    iou = np.where(union > 0, intersection / union, np.nan)
    acc = np.where(label_area > 0, intersection / label_area, np.nan)
  present = union > 0
  metrics = {
      'miou_present': 100 * float(np.mean(iou[present])) if present.any() else float('nan'),
      'miou_all': 100 * float(np.sum(np.nan_to_num(iou)) / len(iou)),
      'macc': 100 * float(np.nanmean(acc)) if np.isfinite(acc).any() else float('nan'),
      'aacc': 100 * float(intersection.sum() / max(label_area.sum(), 1)),
  }
  metrics['miou'] = metrics['miou_' + miou_convention]
  for name, class_iou, class_acc in zip(class_names, iou, acc):
    metrics[f'iou/{name}'] = 100 * float(class_iou)
    metrics[f'acc/{name}'] = 100 * float(class_acc)
  return metrics


def format_table(metrics: dict[str, float], class_names: Sequence[str], miou_convention: str) -> str:
  """A per-class IoU/Acc table followed by the summary line, for the console."""
  width = max(12, max(len(n) for n in class_names) + 2)
  lines = [f'{"class":<{width}}{"IoU":>8}{"Acc":>8}', '-' * (width + 16)]
  for name in class_names:
    lines.append(f'{name:<{width}}{_fmt(metrics[f"iou/{name}"])}{_fmt(metrics[f"acc/{name}"])}')
  lines.append('-' * (width + 16))
  lines.append(f'mIoU {metrics["miou"]:.2f} ({miou_convention} classes; present {metrics["miou_present"]:.2f}, '
               f'all {metrics["miou_all"]:.2f})  mAcc {metrics["macc"]:.2f}  aAcc {metrics["aacc"]:.2f}')
  return '\n'.join(lines)


def classification_metrics(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
  """Metrics in percent from a (K, K) confusion matrix of images (rows true class, columns prediction).

  Returns keys: top1 (the share of images whose highest score is their class), error (100 - top1), macc (mean
  over classes of each class's accuracy) and per class 'acc/<name>' (NaN for a class with no image).
  """
  scores = segmentation_metrics(confusion, class_names)  # its aAcc is top-1 accuracy, mAcc and Acc the same
  return {'top1': scores['aacc'], 'error': 100 - scores['aacc'], 'macc': scores['macc'],
          **{f'acc/{name}': scores[f'acc/{name}'] for name in class_names}}


def format_classification_table(metrics: dict[str, float], class_names: Sequence[str]) -> str:
  """A per-class accuracy table followed by the top-1 line, for the console."""
  width = max(12, max(len(n) for n in class_names) + 2)
  lines = [f'{"class":<{width}}{"Acc":>8}', '-' * (width + 8)]
  lines += [f'{name:<{width}}{_fmt(metrics[f"acc/{name}"])}' for name in class_names]
  lines.append('-' * (width + 8))
  lines.append(f'top-1 {metrics["top1"]:.2f}  error {metrics["error"]:.2f}  mAcc {metrics["macc"]:.2f}')
  return '\n'.join(lines)


def _fmt(value: float) -> str:
  return f'{"n/a":>8}' if np.isnan(value) else f'{value:8.2f}'
