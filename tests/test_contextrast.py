"""Contextrast's pixel-anchor loss: anchors, BANE selection and the loss against direct numpy/scipy versions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from ctxseg_jax import models
from ctxseg_jax.losses import TERMS, contextrast, set_term
from ctxseg_jax.models.heads import HEADS
from ctxseg_jax.models.layers.resize import resize_nearest


def _unit(rng, shape):
  x = rng.normal(size=shape).astype(np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _labels(rng, shape, num_classes, ignore=0.1):
  labels = rng.integers(0, num_classes, size=shape)
  return np.where(rng.random(shape) < ignore, 255, labels).astype(np.int32)


@pytest.mark.parametrize('in_size, out_size', [(5, 3), (7, 4), (26, 22), (39, 33), (8, 16)])
def test_resize_nearest_is_pytorchs_float32_floor_rule(in_size, out_size):
  x = np.arange(2 * in_size * in_size).reshape(2, in_size, in_size)
  got = np.asarray(resize_nearest(jnp.asarray(x), (out_size, out_size)))
  scale = np.float32(in_size) / np.float32(out_size)
  for i in range(out_size):
    for j in range(out_size):
      src_i, src_j = (min(int(np.floor(np.float32(k) * scale)), in_size - 1) for k in (i, j))
      np.testing.assert_array_equal(got[:, i, j], x[:, src_i, src_j])
  if (in_size, out_size) == (26, 22):  # float32 rounding, as PyTorch: 11 * (26 / 22) reads 12, not 13
    np.testing.assert_array_equal(got[:, 11, 0], x[:, 12, 0])


def test_anchors_are_class_means_over_the_batch():
  rng = np.random.default_rng(0)
  embeddings, labels = _unit(rng, (3, 4, 5, 6)), _labels(rng, (3, 4, 5), 4)
  labels[labels == 2] = 1  # class 2 absent
  anchors, counts = contextrast.class_anchors(jnp.asarray(embeddings), jnp.asarray(labels), 4)
  for n in range(4):
    members = embeddings[labels == n]
    assert counts[n] == len(members)
    np.testing.assert_allclose(anchors[n], members.mean(0) if len(members) else 0, rtol=1e-5, atol=1e-6)


def _bane_direct(labels, predictions, num_classes, fraction, region):
  """Per image and class: the error map, scipy's EDT, the ceil(fraction * size) members of smallest (distance,
  row-major position)."""
  selected = np.zeros(labels.shape, bool)
  for b in range(labels.shape[0]):
    valid = labels[b] < num_classes
    for n in range(num_classes):
      owner = labels[b] if region == 'true' else predictions[b]
      member = valid & (predictions[b] != labels[b]) & (owner == n)
      if not member.any():
        continue
      distance = scipy.ndimage.distance_transform_edt(member)
      positions = sorted(zip(distance[member], np.flatnonzero(member)))
      for _, position in positions[:int(np.ceil(fraction * member.sum()))]:
        selected[b].flat[position] = True
  return selected


@pytest.mark.parametrize('region', ['true', 'predicted'])
@pytest.mark.parametrize('fraction', [0.5, 0.2, 1.0])
def test_bane_selects_the_error_pixels_nearest_each_boundary(region, fraction):
  rng = np.random.default_rng(1)
  labels = _labels(rng, (2, 12, 15), 3, ignore=0.05)
  # Blobby predictions, so error regions have interiors and the boundary ranking matters.
  predictions = np.where(rng.random((2, 12, 15)) < 0.6, np.clip(labels, 0, 2),
                         scipy.ndimage.zoom(rng.integers(0, 3, (2, 3, 5)), (1, 4, 3), order=0))
  got = contextrast.boundary_negatives(jnp.asarray(labels), jnp.asarray(predictions), 3, fraction, region)
  want = _bane_direct(labels, predictions, 3, fraction, region)
  assert want.sum() > 5
  np.testing.assert_array_equal(got, want)


def test_draw_takes_higher_tiers_first_and_never_ineligible_columns():
  priority = jnp.asarray([[0, 1, 2, 1, 2, 0, 1], [0, 0, 1, 0, 0, 0, 0]], jnp.float32)
  indices, mask = contextrast._draw(priority, jax.random.key(0), 4)
  first = set(np.asarray(indices[0])[np.asarray(mask[0])].tolist())
  assert {2, 4} <= first and first <= {1, 2, 3, 4, 6} and len(first) == 4
  assert np.asarray(indices[1])[np.asarray(mask[1])].tolist() == [2] and mask[1].sum() == 1


def _loss_direct(embeddings, labels, anchors, present, temperature):
  """Eqs. 3-4 with every other-class embedding as a negative: a loop over anchors, positives and negatives."""
  num_classes = anchors.shape[0]
  flat, flat_labels = embeddings.reshape(-1, embeddings.shape[-1]), labels.reshape(-1)
  per_class = []
  for n in range(num_classes):
    if not present[n]:
      continue
    negatives = [v for v, g in zip(flat, flat_labels) if g < num_classes and g != n]
    terms = []
    for positive in flat[flat_labels == n]:
      numerator = np.exp(anchors[n] @ positive / temperature)
      denominator = numerator + sum(np.exp(anchors[n] @ v / temperature) for v in negatives)
      terms.append(-np.log(numerator / denominator))
    per_class.append(np.mean(terms))
  return np.mean(per_class)


@pytest.mark.parametrize('num_positives', [0, 1000])
def test_pixel_anchor_loss_matches_a_direct_loop(num_positives):
  rng = np.random.default_rng(2)
  embeddings, labels = _unit(rng, (2, 4, 5, 8)), _labels(rng, (2, 4, 5), 3)
  predictions = rng.integers(0, 3, (2, 4, 5))
  anchors = _unit(rng, (3, 8))
  present = np.array([True, True, False])
  got = contextrast.pixel_anchor_loss(
      jnp.asarray(embeddings), jnp.asarray(labels), jnp.asarray(predictions), jnp.asarray(anchors),
      jnp.asarray(present), jax.random.key(0), temperature=0.1, num_negatives=1000, num_positives=num_positives,
      bane_fraction=0.5, bane_region='true')
  np.testing.assert_allclose(got, _loss_direct(embeddings, labels, anchors, present, 0.1), rtol=1e-5)


def test_hard_negatives_raise_the_loss_of_the_anchor_they_were_predicted_as():
  """With a budget of one negative, the anchor of class 0 takes the pixel of class 1 wrongly predicted as 0."""
  embeddings = np.zeros((1, 1, 4, 2), np.float32)
  embeddings[0, 0] = [[1, 0], [1, 0], [0.6, 0.8], [0, 1]]
  labels = np.array([[[0, 0, 1, 1]]])
  predictions = np.array([[[0, 0, 0, 1]]])  # pixel 2 (class 1, close to anchor 0) is predicted as 0
  anchors = np.array([[1, 0], [0, 1]], np.float32)
  loss = lambda: contextrast.pixel_anchor_loss(  # noqa: E731
      jnp.asarray(embeddings), jnp.asarray(labels), jnp.asarray(predictions), jnp.asarray(anchors),
      jnp.asarray([True, False]), jax.random.key(seed), temperature=1.0, num_negatives=1, num_positives=0,
      bane_fraction=1.0, bane_region='true')
  for seed in range(5):  # the hard negative wins over the easy one whatever the draw
    want = np.log1p(np.exp(0.6 - 1.0))  # anchor 0 . hard negative = 0.6, . positives = 1
    np.testing.assert_allclose(loss(), want, rtol=1e-6)


@pytest.mark.parametrize('normalize_anchors', [True, False])
def test_contextrast_loss_updates_lower_anchors_with_the_last_layers(normalize_anchors):
  rng = np.random.default_rng(3)
  low, high = _unit(rng, (2, 8, 8, 4)), _unit(rng, (2, 4, 4, 4))
  labels = _labels(rng, (2, 16, 16), 3)
  logits = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  value, scalars = contextrast.contextrast_loss(
      [jnp.asarray(low), jnp.asarray(high)], jnp.asarray(logits), jnp.asarray(labels), jax.random.key(0),
      layer_weights=(0.4, 1.0), anchor_weights=(0.3, 0.7), temperature=0.1, num_negatives=10_000, num_positives=0,
      bane_fraction=0.5, bane_region='true', normalize_anchors=normalize_anchors, detach_anchors=False)
  per_layer = []
  high_labels = labels[:, ::4, ::4]
  high_anchors = np.stack([high[high_labels == n].mean(0) for n in range(3)])
  for embedding, layer_labels, update in ((low, labels[:, ::2, ::2], True), (high, high_labels, False)):
    anchors = np.stack([embedding[layer_labels == n].mean(0) for n in range(3)])
    if update:
      anchors = 0.3 * anchors + 0.7 * high_anchors
    if normalize_anchors:
      anchors /= np.linalg.norm(anchors, axis=-1, keepdims=True)
    per_layer.append(_loss_direct(embedding, layer_labels, anchors, np.ones(3, bool), 0.1))
  np.testing.assert_allclose([scalars['layer1'], scalars['layer2']], per_layer, rtol=1e-5)
  np.testing.assert_allclose(value, 0.4 * per_layer[0] + per_layer[1], rtol=1e-5)


@pytest.mark.parametrize('detach_anchors', [False, True])
def test_a_class_without_negatives_costs_nothing_and_gradients_stay_finite(detach_anchors):
  """One class present (no negatives for its anchor), the others absent (zero anchors)."""
  rng = np.random.default_rng(5)
  labels = jnp.full((2, 8, 8), 1, jnp.int32).at[:, :2].set(255)

  def loss(e):
    return contextrast.contextrast_loss(
        [e, e[:, ::2, ::2]], jnp.zeros((2, 4, 4, 3)), labels, jax.random.key(0), layer_weights=(0.5, 1.0),
        anchor_weights=(0.5, 0.5), temperature=0.1, num_negatives=8, num_positives=0, bane_fraction=0.5,
        bane_region='true', normalize_anchors=True, detach_anchors=detach_anchors)[0]

  value, grad = jax.value_and_grad(loss)(jnp.asarray(_unit(rng, (2, 4, 4, 8))))
  assert abs(float(value)) < 1e-6 and bool(jnp.all(jnp.isfinite(grad)))


def test_all_ignored_gives_zero_loss_and_finite_gradients():
  rng = np.random.default_rng(4)
  embeddings = jnp.asarray(_unit(rng, (2, 4, 4, 8)))
  labels = jnp.full((2, 8, 8), 255, jnp.int32)

  def loss(e):
    return contextrast.contextrast_loss(
        [e], jnp.zeros((2, 4, 4, 3)), labels, jax.random.key(0), layer_weights=(1.0,), anchor_weights=(0.5, 0.5),
        temperature=0.1, num_negatives=8, num_positives=0, bane_fraction=0.5, bane_region='true',
        normalize_anchors=True, detach_anchors=False)[0]

  value, grad = jax.value_and_grad(loss)(embeddings)
  assert float(value) == 0.0 and bool(jnp.all(jnp.isfinite(grad)))


def test_the_term_reads_its_embedding_outputs_and_validation_names_missing_ones():
  from tests.tiny_config import tiny_model_config
  from ctxseg_jax import config as config_lib
  from ctxseg_jax import experiment
  config = config_lib.base_config()
  config.model = tiny_model_config()
  for stage in range(4):
    models.set_head(config.model, f'proj_{stage + 1}', HEADS.config(
        'projection', reads=(stage,), embed_dim=8, train_only=True, outputs=(f'embed_{stage + 1}',)))
  set_term(config.loss, 'contextrast', TERMS.config('contextrast', weight=0.1))
  experiment.validate_config(config)
  config.loss.terms.contextrast.embeddings = ('embed_1', 'embed_5', 'embed_3', 'embed_4')
  with pytest.raises(config_lib.ConfigError, match=r"contextrast.embeddings\[1\]='embed_5' is not an output"):
    experiment.validate_config(config)


def test_contextrast_leaves_inference_parameters_and_flops_unchanged():
  """`--mode summary` of the demo with and without Contextrast: the projection heads exist only in training."""
  import importlib.util
  from ctxseg_jax import summary
  from tests.shipped_configs import ROOT
  spec = importlib.util.spec_from_file_location('demo_contextrast', f'{ROOT}/configs/demo_contextrast.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  with_it, without = (summary.summarize(module.get_config(variant), memory=False) for variant in ('', 'baseline'))
  assert with_it['params_total'] > without['params_total']
  assert with_it['params_inference'] == without['params_inference']
  assert with_it['flops_inference'] == without['flops_inference'] > 0
