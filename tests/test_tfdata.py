"""Tests for the tf.data loader: sources (files, packed, TFDS, Python), determinism, resume, sharding, eval
batches, errors naming files, and the augmentation against direct formulations."""
from __future__ import annotations

import io
import re
import types

import numpy as np
from PIL import Image
import pytest

tf = pytest.importorskip('tensorflow')
tfds = pytest.importorskip('tensorflow_datasets')

from ctxseg_jax.config import base_config  # noqa: E402
from ctxseg_jax.data import export  # noqa: E402
from ctxseg_jax.data import pack  # noqa: E402
from ctxseg_jax.data import photometric  # noqa: E402
from ctxseg_jax.data import tfdata  # noqa: E402
from ctxseg_jax.data.tfdata import decode  # noqa: E402
from ctxseg_jax.data.tfdata import readers  # noqa: E402
from ctxseg_jax.data.datasets import DataError, SyntheticContextSource, SYNTHETIC_CONTEXT_INFO  # noqa: E402
from ctxseg_jax.data.datasets import cityscapes  # noqa: E402

VALID = set(range(8)) | {255}


def _data_config(**overrides):
  config = base_config()
  config.data.base_size = 32
  config.data.ratio_range = (0.5, 2.0)
  config.data.crop_size = (24, 28)
  config.data.eval_size = (32, 32)
  config.data.worker_count = 0
  for key, value in overrides.items():
    config.data[key] = value
  return config.data


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


class _Arrays:
  """A source of given arrays (image value = f(index) when no arrays are given)."""
  info = SYNTHETIC_CONTEXT_INFO
  split = 'train'

  def __init__(self, images, labels):
    self.images, self.labels = images, labels

  def __len__(self):
    return len(self.images)

  def __getitem__(self, index):
    return {'image': self.images[index], 'label': self.labels[index], 'name': self.sample_name(index)}

  def sample_name(self, index):
    return f'arrays/{index}'


def _indexed(n, shape=(32, 32)):
  """Images whose pixels hold index + 1, labels of class index % 8."""
  return _Arrays([np.full((*shape, 3), i + 1, np.uint8) for i in range(n)],
                 [np.full(shape, i % 8, np.uint8) for i in range(n)])


@pytest.fixture(scope='module')
def synthetic():
  return {'train': SyntheticContextSource('train', 12, image_size=32, seed=3),
          'val': SyntheticContextSource('val', 5, image_size=32, seed=3)}


@pytest.fixture(scope='module')
def folder(tmp_path_factory, synthetic):
  root = tmp_path_factory.mktemp('folder')
  for split, source in synthetic.items():
    export.export_split(source, root, split)
  export.write_dataset_json(SYNTHETIC_CONTEXT_INFO, root)
  return root


# --- sources -------------------------------------------------------------------------------------------------

def test_folder_train_batches_have_static_shapes_and_valid_labels(folder):
  batch = next(tfdata.train_iterator(_data_config(name='folder', root=str(folder)), 'train', 4, seed=0,
                                     process_index=0, process_count=1))
  assert batch['image'].shape == (4, 24, 28, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (4, 24, 28) and batch['label'].dtype == np.uint8
  assert set(np.unique(batch['label']).tolist()) <= VALID


def _eval_samples(data_config, split, global_batch=2, **kwargs):
  batches, num_batches = tfdata.eval_batches(data_config, split, global_batch, process_index=0, process_count=1,
                                             **kwargs)
  batches = list(batches)
  assert len(batches) == num_batches
  return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def test_folder_decodes_like_pil(folder, synthetic):
  """PNG images and palette-mode labels (the exporter's) decode in graph to exactly the source's arrays."""
  got = _eval_samples(_data_config(name='folder', root=str(folder)), 'val')
  for i in range(len(synthetic['val'])):
    np.testing.assert_array_equal(got['image'][i], synthetic['val'][i]['image'])
    np.testing.assert_array_equal(got['label'][i], synthetic['val'][i]['label'])


def _png(array, mode=None, **save):
  buffer = io.BytesIO()
  image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
  if image.mode == 'P':
    image.putpalette(np.random.default_rng(1).integers(0, 256, 768).tolist())
  image.save(buffer, format='PNG', **save)
  return buffer.getvalue()


def test_label_decoding_keeps_raw_values_of_every_png_kind():
  raw = np.random.default_rng(0).integers(0, 40, (9, 13)).astype(np.uint8)
  kinds = {'grey': _png(raw), 'palette': _png(raw, 'P'), 'palette_trns': _png(raw, 'P', transparency=3),
           'grey16': _png(raw.astype(np.uint16) * 1)}
  for kind, data in kinds.items():
    decoded = tfdata.decode_label(tf.constant(data), tf.constant(kind)).numpy()
    np.testing.assert_array_equal(decoded, raw, err_msg=kind)
  with pytest.raises((tf.errors.OpError, DataError), match='rgb.png: label has mode RGB'):
    tfdata.decode_label(tf.constant(_png(np.zeros((4, 4, 3), np.uint8))), tf.constant('rgb.png'))


def test_packed_reads_back_the_packed_samples(tmp_path, synthetic):
  config = base_config()
  config.data.synthetic.num_train, config.data.synthetic.num_val = 6, 3
  config.data.synthetic.image_size = 32
  config.data.synthetic.seed = 3
  pack.pack(config, str(tmp_path), ['train', 'val'], records_per_shard=4, workers=1)
  data_config = _data_config(name='packed', root=str(tmp_path))
  got = _eval_samples(data_config, 'val')
  for i in range(3):
    np.testing.assert_array_equal(got['image'][i], synthetic['val'][i]['image'])
    np.testing.assert_array_equal(got['label'][i], synthetic['val'][i]['label'])
  batch = next(tfdata.train_iterator(data_config, 'train', 3, seed=0, process_index=0, process_count=1))
  assert batch['image'].shape == (3, 24, 28, 3) and set(np.unique(batch['label']).tolist()) <= VALID


@pytest.fixture
def tfds_config(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  for name in tfdata.TFDS_ZIPS:
    (manual / name).write_bytes(b'')
  return _data_config(name='cityscapes_tfds', root=str(manual), tfds_data_dir=str(tmp_path / 'tfds'),
                      base_size=64, ratio_range=(0.5, 1.0), crop_size=(32, 48), eval_size=(48, 64))


def test_tfds_cityscapes_maps_raw_label_ids_to_train_ids(tfds_config):
  rng = np.random.default_rng(0)
  raw_ids = np.array(list(range(34)) + [255], np.uint8)
  images = rng.integers(0, 256, (3, 48, 64, 3)).astype(np.uint8)
  raws = rng.choice(raw_ids, (3, 48, 64)).astype(np.uint8)
  requested = []

  def as_data_source(builder, split, decoders=None, **kwargs):
    """TFDS records as `as_data_source` gives them with SkipDecoding: the PNG bytes of image_left and of the
    raw labelIds (uint8 (H, W, 1))."""
    requested.append((builder.name, split, sorted(decoders)))
    return [{'image_id': np.array(f'aachen_{i}'.encode()), 'image_left': _png(images[i]),
             'segmentation_label': _png(raws[i])} for i in range(3)]

  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    got = _eval_samples(tfds_config, 'val')
    batch = next(tfdata.train_iterator(tfds_config, 'train', 2, seed=0, process_index=0, process_count=1))
  assert requested == [('cityscapes', 'validation', ['image_left', 'segmentation_label']),
                       ('cityscapes', 'train', ['image_left', 'segmentation_label'])]
  lut = cityscapes.raw_label_map().lut
  np.testing.assert_array_equal(got['label'][:3], lut[raws])
  np.testing.assert_array_equal(got['image'][:3], images)
  assert np.all(got['label'][3] == 255)  # padding to the batch multiple
  assert batch['image'].shape == (2, 32, 48, 3)
  assert set(np.unique(batch['label']).tolist()) <= set(range(19)) | {255}


def test_tfds_records_through_skip_decoding_and_bad_raw_ids(tfds_config):
  """TFDS's own mock records (1024x2048, random values 0..254) are read by index; values > 33 are reported."""
  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(DataError, match=r'cityscapes_tfds/val\[0\] \(.*\): label values \[\d+, .*not valid raw'):
      _eval_samples(tfds_config.copy_and_resolve_references(), 'val', global_batch=1)


def test_tfds_needs_the_two_zips(tmp_path):
  config = _data_config(name='cityscapes_tfds', root=str(tmp_path))
  with tfds.testing.mock_data(num_examples=1):
    with pytest.raises(DataError, match='cityscapes-dataset.com') as error:
      tfdata.train_iterator(config, 'train', 1, seed=0, process_index=0, process_count=1)
  assert all(name in str(error.value) for name in tfdata.TFDS_ZIPS)


def test_num_examples_counts_tfds_and_file_splits(tfds_config, folder, monkeypatch):
  with tfds.testing.mock_data(num_examples=3):  # no split info: the data source's length
    assert tfdata.num_examples(tfds_config, 'val') == 3
    with pytest.raises(DataError, match="no split 'dev'"):
      tfdata.num_examples(tfds_config, 'dev')
  prepared = types.SimpleNamespace(info=types.SimpleNamespace(splits={'train': types.SimpleNamespace(
      num_examples=2975)}))
  monkeypatch.setattr(readers, '_tfds_builder', lambda data_config: prepared)
  assert tfdata.num_examples(tfds_config, 'train') == 2975
  config = _data_config(name='folder', root=str(folder))
  assert [tfdata.num_examples(config, split) for split in ('train', 'val')] == [12, 5]


def test_raw_cityscapes_map_in_graph_and_its_error():
  maps = decode.LabelMaps.of([cityscapes.raw_label_map()], cityscapes.CITYSCAPES_INFO)
  raw = np.array([list(range(34)) + [255]], np.uint8)
  mapped = maps.apply(tf.constant(raw), 0, tf.constant('x.png')).numpy()
  np.testing.assert_array_equal(mapped, cityscapes.raw_label_map().lut[raw])
  assert sorted(set(mapped.ravel().tolist())) == list(range(19)) + [255]
  with pytest.raises(tf.errors.OpError, match=r'x\.png: label values \[34, 200\] are not valid raw labels'):
    maps.apply(tf.constant([[1, 34, 200]], tf.uint8), 0, tf.constant('x.png'))


# --- determinism, resume, sharding ---------------------------------------------------------------------------

def test_same_seed_same_stream_different_seed_and_workers(synthetic):
  config = _data_config()
  make = lambda seed, workers: tfdata.train_iterator(config, 'train', 4, seed, process_index=0, process_count=1,
                                                     worker_count=workers, source=synthetic['train'])
  first = _take(make(0, 0), 4)  # crosses an epoch boundary (12 samples)
  _assert_batches_equal(first, _take(make(0, 2), 4))
  other = _take(make(1, 0), 1)
  assert not np.array_equal(first[0]['image'], other[0]['image'])


def test_iterator_resumes_exactly_from_saved_state(folder):
  config = _data_config(name='folder', root=str(folder), worker_count=2, photometric_distortion=True,
                        cat_max_ratio=0.75)
  make = lambda: tfdata.train_iterator(config, 'train', 4, seed=5, process_index=0, process_count=1)
  iterator = make()
  _take(iterator, 2)
  state = iterator.get_state()
  assert isinstance(state, bytes)
  expected = _take(iterator, 3)
  resumed = make()
  resumed.set_state(state)
  resumed.start_prefetch()
  _assert_batches_equal(expected, _take(resumed, 3))
  with pytest.raises(ValueError, match='seed saved 5, now 6'):
    tfdata.train_iterator(config, 'train', 4, seed=6, process_index=0, process_count=1).set_state(state)


def test_epochs_are_permutations_of_disjoint_process_shards():
  source = _indexed(21)
  seen = []
  for process in range(2):
    iterator = tfdata.train_iterator(_data_config(), 'train', 5, 0, process_index=process, process_count=2,
                                     source=source)
    epochs = iterator.sample_indices(0, 20).reshape(2, 10)
    assert sorted(epochs[0]) == sorted(epochs[1]) and list(epochs[0]) != list(epochs[1])
    seen.append(set(epochs[0].tolist()))
  assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(20))  # the 21st is dropped, as grain does


def test_eval_shards_are_disjoint_and_padded_with_ignore():
  source = _indexed(7)
  config = _data_config()
  shards = [_eval_shard(config, source, process) for process in range(2)]
  for shard in shards:
    assert shard['image'].shape == (4, 32, 32, 3) and shard['label'].shape == (4, 32, 32)
    np.testing.assert_array_equal(shard['image_size'], [[32, 32]] * 4)
    np.testing.assert_array_equal(shard['label_size'], [[32, 32]] * 4)
  indices = [set(int(i) - 1 for i in s['image'][:, 0, 0, 0]) - {-1} for s in shards]
  assert indices == [{0, 2, 4, 6}, {1, 3, 5}]
  padding = shards[1]['image'][:, 0, 0, 0] == 0
  assert padding.sum() == 1 and np.all(shards[1]['label'][padding] == 255)


def _eval_shard(config, source, process):
  batches, num_batches = tfdata.eval_batches(config, 'val', 4, process_index=process, process_count=2,
                                             source=source)
  batches = list(batches)
  assert num_batches == 2 and len(batches) == 2 and batches[0]['image'].shape[0] == 2
  return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


# --- eval resize and padding ---------------------------------------------------------------------------------

def test_eval_scale_keeps_the_ratio_and_labels_stay_original():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (30, 50, 3)).astype(np.uint8)
  label = rng.integers(0, 8, (30, 50)).astype(np.uint8)
  config = _data_config(eval_scale=(64, 24), eval_size=(32, 48), eval_label_size=(32, 56), image_pad_value=(7, 7, 7))
  got = _eval_samples(config, 'val', global_batch=1, source=_Arrays([image], [label]))
  # s = min(64 / 50, 24 / 30) = 0.8 -> (int(30 * 0.8 + 0.5), int(50 * 0.8 + 0.5)) = (24, 40)
  np.testing.assert_array_equal(got['image_size'], [[24, 40]])
  np.testing.assert_array_equal(got['label_size'], [[30, 50]])
  expected = tf.cast(tf.round(tf.image.resize(image, (24, 40), antialias=False)), tf.uint8).numpy()
  np.testing.assert_array_equal(got['image'][0, :24, :40], expected)
  assert np.all(got['image'][0, 24:] == 7) and np.all(got['image'][0, :, 40:] == 7)
  np.testing.assert_array_equal(got['label'][0, :30, :50], label)
  assert got['label'].shape == (1, 32, 56) and np.all(got['label'][0, 30:] == 255)


def test_eval_image_larger_than_eval_size_names_sample_and_key():
  source = _Arrays([np.zeros((40, 20, 3), np.uint8)], [np.zeros((40, 20), np.uint8)])
  with pytest.raises(DataError, match=r'arrays/0: image is 40x20 \(HxW\), larger than config\.data\.eval_size'):
    _eval_samples(_data_config(), 'val', global_batch=1, source=source)


# --- bad files -----------------------------------------------------------------------------------------------

@pytest.fixture
def broken_folder(tmp_path, synthetic):
  export.export_split(_Arrays([synthetic['val'][i]['image'] for i in range(2)],
                              [synthetic['val'][i]['label'] for i in range(2)]), tmp_path, 'val')
  export.write_dataset_json(SYNTHETIC_CONTEXT_INFO, tmp_path)
  return tmp_path, _data_config(name='folder', root=str(tmp_path))


def test_invalid_raw_label_value_names_the_file(broken_folder):
  root, config = broken_folder
  path = root / 'labels' / 'val' / '000001.png'
  label = np.zeros((32, 32), np.uint8)
  label[0, :2] = (9, 200)
  Image.fromarray(label).save(path)
  with pytest.raises(DataError, match=re.escape(str(path)) + r': label values \[9, 200\]'):
    _eval_samples(config, 'val')


def test_truncated_png_names_the_file(broken_folder):
  root, config = broken_folder
  path = root / 'images' / 'val' / '000001.png'
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
  path.write_bytes(path.read_bytes()[:1500])
  with pytest.raises(DataError, match=re.escape(str(path))):
    next(tfdata.train_iterator(config, 'val', 2, seed=0, process_index=0, process_count=1))


def test_image_label_size_mismatch_names_both(broken_folder):
  root, config = broken_folder
  label = root / 'labels' / 'val' / '000000.png'
  Image.fromarray(np.zeros((30, 32), np.uint8)).save(label)
  with pytest.raises(DataError) as error:
    _eval_samples(config, 'val')
  assert str(root / 'images' / 'val' / '000000.png') in str(error.value) and str(label) in str(error.value)


# --- augmentation --------------------------------------------------------------------------------------------

def test_identity_augmentation_returns_the_samples(synthetic):
  config = _data_config(ratio_range=(1.0, 1.0), crop_size=(32, 32), flip=False)
  iterator = tfdata.train_iterator(config, 'train', 4, 0, process_index=0, process_count=1,
                                   source=synthetic['train'])
  batch = next(iterator)
  for got, index in zip(batch['image'], iterator.sample_indices(0, 4)):
    np.testing.assert_array_equal(got, synthetic['train'][int(index)]['image'])


def test_window_resize_equals_resizing_everything_then_cropping():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
  label = rng.integers(0, 20, (37, 53)).astype(np.uint8)
  crop = (24, 28)
  for size in [(80, 101), (20, 30), (37, 53), (19, 27)]:
    full = tf.cast(tf.round(tf.image.resize(image, size, antialias=False)), tf.uint8).numpy()
    full_label = tf.image.resize(label[..., None], size, method='nearest').numpy()[..., 0]
    pad = ((0, max(crop[0] - size[0], 0)), (0, max(crop[1] - size[1], 0)))
    full, full_label = np.pad(full, pad + ((0, 0),), constant_values=7), np.pad(full_label, pad, constant_values=255)
    span_h, span_w = full.shape[0] - crop[0], full.shape[1] - crop[1]
    for top, left in [(0, 0), (span_h, span_w), (span_h // 2, span_w // 3)]:
      got_image, got_label = tfdata.resize_window(image, label, tf.constant(size), tf.constant(top),
                                                  tf.constant(left), crop, 7)
      np.testing.assert_array_equal(got_image, full[top:top + crop[0], left:left + crop[1]])
      np.testing.assert_array_equal(got_label, full_label[top:top + crop[0], left:left + crop[1]])


@pytest.mark.parametrize('shape, base_short_side, expected', [
    ((100, 300), 0, (683, 2048)), ((100, 300), 512, (512, 1536)), ((100, 1000), 512, (205, 2048)),
    ((300, 100), 512, (1536, 512))])
def test_rescale_sizes_match_train_augment(shape, base_short_side, expected):
  augment = tfdata.TrainAugment(base_size=2048, ratio_range=(1.0, 1.0), crop_size=(64, 64), flip=False,
                                image_pad_value=0, base_short_side=base_short_side)
  assert tuple(augment.scaled_size(*shape, tf.constant(1.0, tf.float64)).numpy()) == expected


def test_small_images_are_padded_and_flips_mirror(synthetic):
  image = synthetic['train'][0]['image'][:20, :24]
  label = synthetic['train'][0]['label'][:20, :24]
  config = _data_config(base_size=24, ratio_range=(1.0, 1.0), crop_size=(28, 30), image_pad_value=(9, 9, 9))
  batch = next(tfdata.train_iterator(config, 'train', 8, 0, process_index=0, process_count=1,
                                     source=_Arrays([image] * 8, [label] * 8)))
  flipped = 0
  for got_image, got_label in zip(batch['image'], batch['label']):
    inner_image, inner_label = got_image[:20, :24], got_label[:20, :24]
    if not np.array_equal(inner_image, image):  # a flip mirrors the image area; the padding stays bottom/right
      inner_image, inner_label, flipped = inner_image[:, ::-1], inner_label[:, ::-1], flipped + 1
    np.testing.assert_array_equal(inner_image, image)
    np.testing.assert_array_equal(inner_label, label)
    assert np.all(got_image[20:] == 9) and np.all(got_image[:, 24:] == 9)
    assert np.all(got_label[20:] == 255) and np.all(got_label[:, 24:] == 255)
  assert 0 < flipped < 8


def _acceptable(label, ratio):
  counts = np.bincount(label.ravel(), minlength=256)[:255]
  return np.count_nonzero(counts) > 1 and counts.max() < ratio * counts.sum()


def test_cat_max_ratio_redraws_crops_dominated_by_one_class():
  label = np.zeros((16, 64), np.uint8)
  label[:, 32:] = 1  # one class per half: a 16-wide crop passes 0.75 for 7 of its 49 positions
  source = _Arrays([np.zeros((16, 64, 3), np.uint8)] * 40, [label] * 40)
  shares = {}
  for ratio in (1.0, 0.75):
    config = _data_config(base_size=64, ratio_range=(1.0, 1.0), crop_size=(16, 16), flip=False, cat_max_ratio=ratio)
    batch = next(tfdata.train_iterator(config, 'train', 40, 0, process_index=0, process_count=1, source=source))
    shares[ratio] = np.mean([_acceptable(crop, 0.75) for crop in batch['label']])
  # Accepted within 10 draws with probability 1 - (6/7)^10 = 0.79, plus 1/7 of the unchecked 11th draws.
  assert shares[1.0] < 0.35 and shares[0.75] > 0.6, shares


def test_photometric_distortion_matches_the_numpy_reference():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (40, 64, 3)).astype(np.uint8)
  image[0, :4] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [7, 7, 7]]
  for params in [photometric.DistortionParams(brightness=-31.5, contrast=1.37, contrast_first=True),
                 photometric.DistortionParams(contrast=0.61, saturation=1.43, hue=-18),
                 photometric.DistortionParams(brightness=5.5, saturation=0.52, hue=17, contrast=1.2,
                                              contrast_first=True)]:
    np.testing.assert_array_equal(tfdata.distort(image, params).numpy(),
                                  photometric.apply_distortion(image, params), err_msg=str(params))
