import threading

import ml_collections
import numpy as np
import pytest

from ctxseg_jax.config import base_config
from ctxseg_jax.data import pipeline, transforms
from ctxseg_jax.data.datasets import SyntheticContextSource


@pytest.fixture(scope='module')
def data_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.data.base_size = 32
  config.data.ratio_range = (0.5, 2.0)
  config.data.crop_size = (24, 28)
  config.data.eval_size = (32, 32)
  config.data.worker_count = 0
  return config.data


@pytest.fixture(scope='module')
def source():
  return SyntheticContextSource('train', 40, image_size=32, seed=3)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_train_batches_have_static_shapes_and_valid_labels(source, data_config):
  batch = next((pipeline.train_iterator(source, data_config, 4, seed=0)))
  assert batch['image'].shape == (4, 24, 28, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (4, 24, 28) and batch['label'].dtype == np.uint8
  values = set(np.unique(batch['label']))
  assert values <= set(range(8)) | {255}


def test_same_seed_same_stream_different_seed_different_stream(source, data_config):
  first = _take((pipeline.train_iterator(source, data_config, 4, seed=0)), 3)
  again = _take((pipeline.train_iterator(source, data_config, 4, seed=0)), 3)
  other = _take((pipeline.train_iterator(source, data_config, 4, seed=1)), 3)
  _assert_batches_equal(first, again)
  assert not np.array_equal(first[0]['image'], other[0]['image'])


def test_stream_does_not_depend_on_worker_count(source, data_config):
  in_process = _take((pipeline.train_iterator(source, data_config, 4, seed=0, worker_count=0)), 3)
  with_workers = _take((pipeline.train_iterator(source, data_config, 4, seed=0, worker_count=2)), 3)
  _assert_batches_equal(in_process, with_workers)


def test_iterator_resumes_exactly_from_saved_state(source, data_config):
  iterator = pipeline.train_iterator(source, data_config, 4, seed=0, worker_count=2)
  _take(iterator, 2)
  state = iterator.get_state()
  expected = _take(iterator, 3)
  resumed = pipeline.train_iterator(source, data_config, 4, seed=0, worker_count=2)
  resumed.set_state(state)
  _assert_batches_equal(expected, _take(resumed, 3))


def test_processes_read_disjoint_shards(source, data_config):
  class Recording(SyntheticContextSource):
    def __getitem__(self, index):
      sample = super().__getitem__(index)
      return {**sample, 'image': np.full_like(sample['image'], index)}  # image value = record index

  recording = Recording('train', 40, image_size=32, seed=3)
  config = data_config.copy_and_resolve_references()
  config.ratio_range = (1.0, 1.0)
  config.crop_size = (32, 32)
  seen = []
  for process in range(2):
    iterator = pipeline.train_iterator(recording, config, 5, seed=0, process_index=process, process_count=2)
    batches = _take(iterator, 4)  # one epoch of this process's 20 records
    seen.append({int(b[0, 0, 0]) for batch in batches for b in batch['image']})
  assert len(seen[0]) == len(seen[1]) == 20
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(40))


def test_processes_split_the_single_process_global_batches(source, data_config):
  """P processes with B / P samples each see exactly the samples (augmentation included) of one process's batches
  of B: process p holds positions [p B / P, (p + 1) B / P) of each global batch."""
  single = _take(pipeline.train_iterator(source, data_config, 4, seed=5, process_count=1, process_index=0), 6)
  shares = [_take(pipeline.train_iterator(source, data_config, 2, seed=5, process_index=p, process_count=2), 6)
            for p in range(2)]
  for step, batch in enumerate(single):
    for key in ('image', 'label'):
      joined = np.concatenate([shares[p][step][key] for p in range(2)])
      np.testing.assert_array_equal(joined, batch[key], err_msg=f'{key} of global batch {step}')


def test_eval_pass_covers_every_sample_once_with_ignore_padding(data_config):
  source = SyntheticContextSource('val', 10, image_size=32, seed=3)
  shards = []
  for process in range(2):
    batches, num_batches = pipeline.eval_batches(source, data_config, global_batch=4, process_index=process,
                                                 process_count=2)
    shards.append(list(batches))
    assert num_batches == 3 and len(shards[-1]) == 3
  images = np.concatenate([b['image'] for shard in shards for b in shard])
  labels = np.concatenate([b['label'] for shard in shards for b in shard])
  assert images.shape == (12, 32, 32, 3)
  expected = [source[i]['label'] for i in range(10)]
  matched = sorted(i for i in range(10) for label in labels if np.array_equal(label, expected[i]))
  assert matched == list(range(10))
  assert sum(np.all(label == 255) for label in labels) == 2


@pytest.mark.parametrize('shape, base_short_side, expected', [
    ((100, 300), 0, (683, 2048)),       # long side alone (PyTorch-Encoding): 2048 x r
    ((100, 300), 512, (512, 1536)),     # mmseg scale (2048, 512): the short side binds
    ((100, 1000), 512, (205, 2048)),    # aspect > 4: the long side binds
    ((300, 100), 512, (1536, 512)),     # portrait
])
def test_train_rescale_long_side_or_mmseg_keep_ratio_scale(monkeypatch, shape, base_short_side, expected):
  sizes = []
  real_resize = transforms.resize_label

  caller = threading.get_ident()

  def spy(label, size):
    if threading.get_ident() == caller:  # not the prefetch threads of iterators from other tests
      sizes.append(tuple(size))
    return real_resize(label, size)

  monkeypatch.setattr(transforms, 'resize_label', spy)
  augment = transforms.TrainAugment(base_size=2048, ratio_range=(1.0, 1.0), crop_size=(64, 64), flip=False,
                                    image_pad_value=0, base_short_side=base_short_side)
  sample = {'image': np.zeros((*shape, 3), np.uint8), 'label': np.zeros(shape, np.uint8)}
  out = augment.random_map(sample, np.random.default_rng(0))
  assert sizes == [expected] and out['image'].shape == (64, 64, 3)
