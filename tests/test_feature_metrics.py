"""Feature-level metrics A / U / U_l: against direct loops over pixels, pairs and neighbour sets, and end to end."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctxseg_jax import experiment, feature_metrics, inference
from ctxseg_jax.evaluate import Evaluator
from tests.tiny_config import get_config, use_encnet, use_ocrnet

NUM_CLASSES = 4


def _direct_metrics(features_by_class, l):
  """The seed's formulas as written: every ordered pair of features, every ordered pair of centres, and the
  minimum over every set of l other centres."""
  unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
  alignment = np.mean([np.mean([np.linalg.norm(a - b) for a in v for b in v]) for v in features_by_class])
  centres = [unit(np.mean(v, axis=0)) for v in features_by_class]
  n = len(centres)
  uniformity = np.mean([np.linalg.norm(centres[i] - centres[j]) for i in range(n) for j in range(n) if i != j])
  neighbourhood = sum(
      min(sum(np.linalg.norm(centres[i] - centres[j]) for j in subset)
          for subset in itertools.combinations([j for j in range(n) if j != i], l))
      for i in range(n)) / (n * l)
  return alignment, uniformity, neighbourhood


def _random_batch(seed, batch=3, size=(6, 7), channels=5):
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(batch, *size, channels)).astype(np.float32)
  labels = rng.integers(-1, NUM_CLASSES - 1, size=(batch, *size)).astype(np.int32)  # class 3 absent
  return features, labels


def test_metrics_equal_the_direct_formulas_when_every_pixel_is_sampled():
  features, labels = _random_batch(0)
  stats = feature_metrics.batch_statistics(jnp.asarray(features), jnp.asarray(labels), jnp.arange(3),
                                           num_classes=NUM_CLASSES, samples=200, seed=0)
  got = feature_metrics.feature_metrics(*jax.device_get(stats), neighbours=2)
  unit = features / np.linalg.norm(features, axis=-1, keepdims=True)
  by_class = [unit[labels == k] for k in range(NUM_CLASSES) if (labels == k).any()]
  assert len(by_class) == 3 and got['features/classes'] == 3 and got['features/neighbours'] == 2
  expected = _direct_metrics(by_class, 2)
  for key, value in zip(feature_metrics.KEYS, expected):
    assert got[key] == pytest.approx(value, rel=1e-6), key


def test_neighbours_are_capped_at_the_other_classes_present():
  features, labels = _random_batch(1)
  stats = feature_metrics.batch_statistics(jnp.asarray(features), jnp.asarray(labels), jnp.arange(3),
                                           num_classes=NUM_CLASSES, samples=8, seed=0)
  got = feature_metrics.feature_metrics(*jax.device_get(stats), neighbours=5)
  assert got['features/neighbours'] == 2
  assert got['features/neighbourhood_uniformity'] == pytest.approx(got['features/uniformity'], rel=1e-9)


def test_the_sample_is_the_largest_keys_of_each_class_and_does_not_depend_on_batching():
  features, labels = _random_batch(2, batch=4)
  indices = np.array([10, 11, 12, 13])
  samples = 5
  whole = feature_metrics.batch_statistics(jnp.asarray(features), jnp.asarray(labels), jnp.asarray(indices),
                                           num_classes=NUM_CLASSES, samples=samples, seed=3)
  keys = np.asarray(feature_metrics.pixel_keys(jnp.asarray(indices), labels.shape[1:], 3))
  unit = features / np.linalg.norm(features, axis=-1, keepdims=True)
  for k in range(NUM_CLASSES):
    in_class = labels == k
    np.testing.assert_allclose(np.asarray(whole.sums[k]), unit[in_class].sum(0), rtol=1e-5, atol=1e-5)
    assert int(whole.counts[k]) == in_class.sum()
    order = np.argsort(-keys[in_class], kind='stable')[:samples]
    expected_keys = np.full(samples, -1)
    expected_keys[:len(order)] = keys[in_class][order]
    np.testing.assert_array_equal(np.asarray(whole.keys[k]), expected_keys)
    np.testing.assert_allclose(np.asarray(whole.samples[k])[:len(order)], unit[in_class][order], rtol=1e-6,
                               atol=1e-7)
    assert not np.asarray(whole.samples[k])[len(order):].any()
  # The same images in batches of 1 and 3, merged: the same statistics.
  parts = [feature_metrics.batch_statistics(jnp.asarray(features[s]), jnp.asarray(labels[s]), jnp.asarray(indices[s]),
                                            num_classes=NUM_CLASSES, samples=samples, seed=3)
           for s in (slice(0, 1), slice(1, 4))]
  merged = feature_metrics.merge(*parts)
  for a, b in zip(merged, whole):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert int(whole.counts[3]) == 0 and np.all(np.asarray(whole.keys[3]) == -1)


def test_labels_at_features_match_a_direct_loop_over_resized_and_padded_images():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 6, size=(2, 20, 22)).astype(np.int32)
  labels[labels == 5] = 255
  image_size = np.array([[24, 30], [16, 12]])   # each image's region in the 24x32 input
  original_size = np.array([[20, 22], [11, 9]])
  input_shape, feature_shape = (24, 32), (6, 8)
  got = np.asarray(feature_metrics.labels_at_features(jnp.asarray(labels), jnp.asarray(image_size),
                                                      jnp.asarray(original_size), input_shape, feature_shape, 5))
  for b, y, x in itertools.product(range(2), range(6), range(8)):
    iy, ix = y * 24 // 6, x * 32 // 8
    if iy >= image_size[b, 0] or ix >= image_size[b, 1]:
      expected = -1
    else:
      value = labels[b, iy * original_size[b, 0] // image_size[b, 0], ix * original_size[b, 1] // image_size[b, 1]]
      expected = value if value < 5 else -1
    assert got[b, y, x] == expected, (b, y, x)


@pytest.mark.parametrize('make_config',
                         [get_config, lambda: use_encnet(get_config()), lambda: use_ocrnet(get_config())],
                         ids=['fcn', 'encnet', 'hrnet_ocr'])
def test_recorded_features_are_what_the_classifier_maps_to_the_logits(make_config):
  config = make_config()
  exp = experiment.build(config, jax.devices()[:1])
  state = exp.init_state()
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  images = jax.random.randint(jax.random.key(0), (2, 32, 32, 3), 0, 256).astype(jnp.uint8)
  _, features = inference.predict_logits_and_features(variables, images, model=exp.model, config=config)
  logits = exp.model.apply(variables, inference.normalize(images, config.data.mean, config.data.std),
                           train=False)['logits']
  classifier = state.params['decode_head']['conv_seg']
  assert features.shape[:3] == logits.shape[:3] and features.shape[-1] == classifier['kernel'].shape[2]
  np.testing.assert_allclose(np.asarray(features @ classifier['kernel'][0, 0] + classifier['bias']),
                             np.asarray(logits), rtol=1e-5, atol=1e-5)


def test_evaluation_reports_the_metrics_and_they_do_not_depend_on_batch_size_or_devices():
  results = []
  for batch_size, devices in ((2, 1), (8, 8)):
    config = get_config()
    config.eval.feature_metrics = True
    config.eval.batch_size = batch_size
    config.eval.feature_samples = 16
    exp = experiment.build(config, jax.devices()[:devices])
    state = exp.init_state()
    results.append(Evaluator(exp).run({'params': state.params, 'batch_stats': state.batch_stats}))
  for key in feature_metrics.KEYS:
    assert 0 < results[0][key] < 2 and results[0][key] == pytest.approx(results[1][key], rel=1e-5), key
  assert results[0]['miou'] == results[1]['miou']


def test_multi_scale_evaluation_reports_the_features_of_the_whole_image_at_scale_one():
  results = []
  for scales, flip in (((1.0,), False), ((0.75, 1.0), True)):
    config = get_config()
    config.eval.feature_metrics, config.eval.scales, config.eval.flip = True, scales, flip
    exp = experiment.build(config, jax.devices()[:1])
    state = exp.init_state()
    results.append(Evaluator(exp).run({'params': state.params, 'batch_stats': state.batch_stats}))
  for key in feature_metrics.KEYS:
    assert results[0][key] == pytest.approx(results[1][key], rel=1e-5), key
  assert results[0]['miou'] != results[1]['miou']  # the scores did come from the multi-scale protocol
