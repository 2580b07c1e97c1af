import jax.numpy as jnp
import numpy as np
import pytest

from ctxseg_jax import metrics

K, IGNORE = 5, 255


def _direct_iou(pred, label, k):
  """Per-class IoU by set counting over valid pixels; NaN when the class is in neither map."""
  valid = label != IGNORE
  ious = []
  for c in range(k):
    inter = np.sum((pred == c) & (label == c) & valid)
    union = np.sum(((pred == c) | (label == c)) & valid)
    ious.append(inter / union if union else np.nan)
  return np.array(ious)


@pytest.fixture
def maps():
  rng = np.random.default_rng(0)
  label = rng.integers(0, K - 1, size=(3, 17, 13))  # class K-1 never in labels
  pred = np.where(rng.random(label.shape) < 0.6, label, rng.integers(0, K - 1, size=label.shape))
  label[rng.random(label.shape) < 0.1] = IGNORE
  pred[0, 0, 0] = 0
  return pred, label


def test_confusion_matrix_counts_valid_pairs(maps):
  pred, label = maps
  conf = np.asarray(metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(label), K, IGNORE))
  expected = np.zeros((K, K), np.int64)
  for p, l in zip(pred.ravel(), label.ravel()):
    if l != IGNORE:
      expected[l, p] += 1
  np.testing.assert_array_equal(conf, expected)


def test_metrics_match_direct_computation(maps):
  pred, label = maps
  conf = np.asarray(metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(label), K, IGNORE))
  names = [f'c{i}' for i in range(K)]
  result = metrics.segmentation_metrics(conf, names, 'present')
  iou = _direct_iou(pred, label, K)
  assert np.isnan(iou[K - 1]) and np.isnan(result[f'iou/c{K - 1}'])
  np.testing.assert_allclose([result[f'iou/c{i}'] for i in range(K - 1)], 100 * iou[:K - 1], rtol=1e-12)
  np.testing.assert_allclose(result['miou_present'], 100 * np.nanmean(iou), rtol=1e-12)
  np.testing.assert_allclose(result['miou_all'], 100 * np.nansum(iou) / K, rtol=1e-12)
  assert result['miou'] == result['miou_present']
  assert metrics.segmentation_metrics(conf, names, 'all')['miou'] == result['miou_all']
  valid = label != IGNORE
  np.testing.assert_allclose(result['aacc'], 100 * np.mean(pred[valid] == label[valid]), rtol=1e-12)
  accs = [np.mean(pred[valid & (label == c)] == c) for c in range(K - 1)]
  np.testing.assert_allclose(result['macc'], 100 * np.mean(accs), rtol=1e-12)


def test_accumulator_flushes_before_int32_overflow(maps):
  pred, label = maps
  conf = metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(label), K, IGNORE)
  acc = metrics.ConfusionAccumulator(K)
  for _ in range(5):
    acc.add(conf, max_pixels=2**30)  # forces a host flush every second batch
  np.testing.assert_array_equal(acc.result(), 5 * np.asarray(conf, np.int64))


def test_format_table_names_every_class(maps):
  pred, label = maps
  conf = np.asarray(metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(label), K, IGNORE))
  names = ['sky', 'road', 'car', 'boat', 'unused']
  table = metrics.format_table(metrics.segmentation_metrics(conf, names), names, 'present')
  for name in names:
    assert name in table
  assert 'n/a' in table and 'mIoU' in table


def test_boundary_confusions_count_the_pixels_of_each_trimap():
  """Against scipy: boundaries by a loop over 8-neighbours inside each image, trimaps by the exact distance
  transform, one confusion matrix per width."""
  import itertools
  from scipy import ndimage
  rng = np.random.default_rng(0)
  labels = np.full((2, 14, 16), 255, np.uint8)
  labels[0, :12, :15] = np.repeat(np.repeat(rng.integers(0, 3, (4, 5)), 3, 0), 3, 1)
  labels[1, :9, :16] = rng.integers(0, 3, (9, 16))
  labels[0, 2:4, 5:8] = 255  # a void region inside the image has a boundary
  original_size = np.array([[12, 15], [9, 16]])
  predictions = rng.integers(0, 3, (2, 14, 16))
  widths = (1, 3)
  got = np.asarray(metrics.boundary_confusions(jnp.asarray(predictions), jnp.asarray(labels),
                                               jnp.asarray(original_size), widths, 3, 255))
  for w, matrix in zip(widths, got):
    expected = np.zeros((3, 3), np.int64)
    for b in range(2):
      h, wd = original_size[b]
      image = labels[b, :h, :wd]
      boundary = np.zeros((h, wd), bool)
      for y, x in itertools.product(range(h), range(wd)):
        neighbours = image[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]
        boundary[y, x] = (neighbours != image[y, x]).any()
      trimap = ndimage.distance_transform_edt(~boundary) <= w
      for y, x in zip(*np.nonzero(trimap & (image != 255))):
        expected[image[y, x], predictions[b, y, x]] += 1
    np.testing.assert_array_equal(matrix, expected)
  assert 0 < got[0].sum() < got[1].sum()
