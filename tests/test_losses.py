import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from ctxseg_jax.losses import TERMS, loss_config, make_loss
from ctxseg_jax.losses.cross_entropy import ohem_cross_entropy, pixel_cross_entropy
from ctxseg_jax.losses.se_loss import class_presence, se_loss
from ctxseg_jax.models.layers.resize import resize_bilinear

IGNORE = 255


def _direct_ce(logits, labels, reduction, weight=None):
  """Per pixel: PyTorch CrossEntropyLoss(weight=w, ignore_index) for 'valid' (divided by the summed weights of
  valid pixels, their count without weights); mmseg's mean over all pixels for 'all'."""
  total, weights = 0.0, 0.0
  for idx in np.ndindex(labels.shape):
    if labels[idx] == IGNORE:
      continue
    w = 1.0 if weight is None else weight[labels[idx]]
    total += w * (logsumexp(logits[idx]) - logits[idx][labels[idx]])
    weights += w
  return total / (max(weights, 1) if reduction == 'valid' else labels.size)


def _problem(seed):
  """(logits (2, 5, 6, 4) float64, labels (2, 5, 6) with 30% ignored)."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(2, 5, 6, 4)) * 3
  labels = rng.integers(0, 4, size=(2, 5, 6))
  labels[rng.random(labels.shape) < 0.3] = IGNORE
  return logits, labels


@pytest.mark.parametrize('reduction', ['valid', 'all'])
def test_pixel_cross_entropy_matches_direct_sum(reduction):
  logits, labels = _problem(0)
  got = pixel_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), IGNORE, reduction)
  np.testing.assert_allclose(float(got), _direct_ce(logits, labels, reduction), rtol=1e-5)


def test_all_ignored_gives_zero_loss_and_zero_gradient():
  logits = jnp.ones((1, 3, 3, 4))
  labels = jnp.full((1, 3, 3), IGNORE)
  loss, grad = jax.value_and_grad(lambda x: pixel_cross_entropy(x, labels, IGNORE, 'valid'))(logits)
  assert float(loss) == 0.0 and not np.any(np.asarray(grad))


def test_segmentation_loss_weights_aux_and_resizes_to_labels():
  rng = np.random.default_rng(1)
  labels = jnp.asarray(rng.integers(0, 3, size=(2, 8, 8)))
  logits = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)  # already at label size: resize is identity
  aux = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  config = loss_config(ce=TERMS.config('cross_entropy'),
                       aux=TERMS.config('cross_entropy', output='aux_logits', weight=0.4))
  loss_fn = make_loss(config, ignore_index=IGNORE)
  total, terms = loss_fn({'logits': logits, 'aux_logits': aux}, {'label': labels}, 0, jax.random.key(0))
  main = pixel_cross_entropy(logits, labels, IGNORE)
  np.testing.assert_allclose(float(terms['loss_ce']), float(main), rtol=1e-6)
  np.testing.assert_allclose(float(terms['loss_aux']), 0.4 * float(pixel_cross_entropy(aux, labels, IGNORE)),
                             rtol=1e-6)
  np.testing.assert_allclose(float(total), float(terms['loss_ce'] + terms['loss_aux']), rtol=1e-6)
  small = jnp.asarray(rng.normal(size=(2, 2, 2, 3)), jnp.float32)  # stride-4 logits are upsampled to 8x8
  total_small, _ = loss_fn({'logits': small, 'aux_logits': small}, {'label': labels}, 0, jax.random.key(0))
  assert np.isfinite(float(total_small))


# ---------------------------------------------------------------------------------------------------- SE-loss

def _direct_presence(labels, num_classes):
  presence = np.zeros((labels.shape[0], num_classes))
  for b in range(labels.shape[0]):
    for value in np.unique(labels[b]):
      if 0 <= value < num_classes:
        presence[b, value] = 1
  return presence


def _direct_bce(logits, target):
  """Mean over all entries of -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))], in float64."""
  p = 1 / (1 + np.exp(-logits))
  return float(np.mean(-(target * np.log(p) + (1 - target) * np.log(1 - p))))


def test_class_presence_ignores_ignore_and_out_of_range_values():
  labels = np.array([[[0, 0, 255], [3, 7, 255]],      # 7 is outside 0..4, 255 is ignore
                     [[255, 255, 255], [255, 255, 255]],  # nothing valid
                     [[4, 1, 1], [2, 2, 0]]])
  got = np.asarray(class_presence(jnp.asarray(labels), 5, IGNORE))
  np.testing.assert_array_equal(got, [[1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, 1]])
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 12, size=(4, 9, 7))
  labels[rng.random(labels.shape) < 0.3] = IGNORE
  np.testing.assert_array_equal(np.asarray(class_presence(jnp.asarray(labels), 10, IGNORE)),
                                _direct_presence(labels, 10))


def test_se_loss_matches_direct_binary_cross_entropy():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 6, size=(3, 8, 8))
  labels[rng.random(labels.shape) < 0.2] = IGNORE
  logits = rng.normal(size=(3, 6)) * 2
  got = se_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), IGNORE)
  np.testing.assert_allclose(float(got), _direct_bce(logits, _direct_presence(labels, 6)), rtol=1e-5)
  # Stable for large logits (no log(0)), with finite gradients.
  big = jnp.asarray([[60.0, -60.0, 0.0, 30.0, -30.0, 5.0]] * 3)
  value, grad = jax.value_and_grad(lambda z: se_loss(z, jnp.asarray(labels), IGNORE))(big)
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))


def test_segmentation_loss_adds_weighted_se_term_only_when_asked():
  rng = np.random.default_rng(4)
  labels = jnp.asarray(rng.integers(0, 3, size=(2, 8, 8)))
  logits = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  se_logits = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
  config = loss_config(ce=TERMS.config('cross_entropy'), se=TERMS.config('se', output='se_logits', weight=0.2))
  outputs, batch = {'logits': logits, 'se_logits': se_logits}, {'label': labels}
  total, terms = make_loss(config, ignore_index=IGNORE)(outputs, batch, 0, jax.random.key(0))
  assert set(terms) == {'loss_ce', 'loss_se'}
  np.testing.assert_allclose(float(terms['loss_se']), 0.2 * float(se_loss(se_logits, labels, IGNORE)), rtol=1e-6)
  np.testing.assert_allclose(float(total), float(terms['loss_ce'] + terms['loss_se']), rtol=1e-6)
  config.terms.se.weight = 0.0
  _, terms = make_loss(config, ignore_index=IGNORE)(outputs, batch, 0, jax.random.key(0))
  assert set(terms) == {'loss_ce'}


def test_a_term_weight_starts_at_its_start_step():
  rng = np.random.default_rng(5)
  labels = jnp.asarray(rng.integers(0, 3, size=(2, 8, 8)))
  outputs = {'logits': jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32),
             'aux_logits': jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)}
  config = loss_config(ce=TERMS.config('cross_entropy'),
                       aux=TERMS.config('cross_entropy', output='aux_logits', weight=0.5, start_step=10))
  loss_fn = jax.jit(make_loss(config, ignore_index=IGNORE))
  aux_ce = float(pixel_cross_entropy(outputs['aux_logits'], labels, IGNORE))
  for step, weight in ((0, 0.0), (9, 0.0), (10, 0.5), (11, 0.5)):
    total, terms = loss_fn(outputs, {'label': labels}, jnp.int32(step), jax.random.key(0))
    np.testing.assert_allclose(float(terms['loss_aux']), weight * aux_ce, rtol=1e-6)
    np.testing.assert_allclose(float(total), float(terms['loss_ce']) + weight * aux_ce, rtol=1e-6)


@pytest.mark.parametrize('reduction', ['valid', 'all'])
def test_class_weights_match_the_references(reduction):
  logits, labels = _problem(6)
  weight = (0.5, 2.0, 1.0, 3.0)
  got = pixel_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), IGNORE, reduction, weight)
  np.testing.assert_allclose(float(got), _direct_ce(logits, labels, reduction, weight), rtol=1e-5)
  config = loss_config(ce=TERMS.config('cross_entropy', reduction=reduction, class_weight=weight))
  total, _ = make_loss(config, ignore_index=IGNORE)({'logits': jnp.asarray(logits, jnp.float32)},
                                                     {'label': jnp.asarray(labels)}, 0, jax.random.key(0))
  np.testing.assert_allclose(float(total), float(got), rtol=1e-6)


def test_a_term_before_its_start_step_is_not_computed_so_it_cannot_poison_the_loss():
  rng = np.random.default_rng(7)
  labels = jnp.asarray(rng.integers(0, 3, size=(2, 8, 8)))
  logits = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  config = loss_config(ce=TERMS.config('cross_entropy'),
                       aux=TERMS.config('cross_entropy', output='aux_logits', weight=0.5, start_step=10))
  loss_fn = make_loss(config, ignore_index=IGNORE)

  def total(aux_logits, step):
    return loss_fn({'logits': logits, 'aux_logits': aux_logits}, {'label': labels}, step, jax.random.key(0))[0]

  poisoned = jnp.full_like(logits, jnp.nan)  # a term that is not finite yet
  value, grad = jax.jit(jax.value_and_grad(total))(poisoned, jnp.int32(9))
  np.testing.assert_allclose(float(value), float(pixel_cross_entropy(logits, labels, IGNORE)), rtol=1e-6)
  assert np.all(np.asarray(grad) == 0)
  assert np.isnan(float(jax.jit(total)(poisoned, jnp.int32(10))))  # from its start step on, it counts


def _reference_ohem(logits, labels, thresh, min_kept, weight=None):
  """HRNet's OhemCrossEntropy.forward, step by step in numpy."""
  flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
  log_probs = flat_logits - logsumexp(flat_logits, axis=-1, keepdims=True)
  mask = flat_labels != IGNORE
  target = np.where(mask, flat_labels, 0)
  pixel_losses = -log_probs[np.arange(len(target)), target] * (1.0 if weight is None else np.asarray(weight)[target])
  pred = np.exp(log_probs[np.arange(len(target)), target])[mask]
  order = np.argsort(pred, kind='stable')
  pred = pred[order]
  threshold = max(pred[min(min_kept, pred.size - 1)], thresh)
  kept = pixel_losses[mask][order][pred < threshold]
  return kept.mean()


@pytest.mark.parametrize('thresh, min_kept', [(0.7, 10), (0.7, 200), (0.05, 10)])
def test_ohem_matches_hrnets_algorithm(thresh, min_kept):
  logits, labels = _problem(8)  # 2 x 5 x 6 pixels, about 42 valid
  weight = (0.5, 2.0, 1.0, 3.0)
  got = ohem_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), IGNORE, thresh=thresh,
                           min_kept=min_kept, class_weight=weight)
  np.testing.assert_allclose(float(got), _reference_ohem(logits, labels, thresh, min_kept, weight), rtol=1e-5)


def test_ohem_term_selects_per_group_and_averages_the_groups():
  logits, labels = _problem(9)
  config = loss_config(ce=TERMS.config('cross_entropy', reduction='ohem', ohem_thresh=0.7, ohem_min_kept=5,
                                       ohem_group_size=1))
  total, _ = make_loss(config, ignore_index=IGNORE)({'logits': jnp.asarray(logits, jnp.float32)},
                                                     {'label': jnp.asarray(labels)}, 0, jax.random.key(0))
  per_image = [_reference_ohem(logits[i:i + 1], labels[i:i + 1], 0.7, 5) for i in range(2)]
  np.testing.assert_allclose(float(total), np.mean(per_image), rtol=1e-5)
  assert abs(np.mean(per_image) - _reference_ohem(logits, labels, 0.7, 5)) > 1e-3  # grouping matters here


@pytest.mark.parametrize('align_corners', [False, True])
def test_cross_entropy_resizes_logits_to_the_labels_with_its_corner_convention(align_corners):
  rng = np.random.default_rng(10)
  logits = jnp.asarray(rng.normal(size=(2, 3, 4, 3)) * 3, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, size=(2, 9, 12)))
  config = loss_config(ce=TERMS.config('cross_entropy', align_corners=align_corners))
  total, _ = make_loss(config, ignore_index=IGNORE)({'logits': logits}, {'label': labels}, 0, jax.random.key(0))
  expected = pixel_cross_entropy(resize_bilinear(logits, (9, 12), align_corners=align_corners), labels, IGNORE)
  other = pixel_cross_entropy(resize_bilinear(logits, (9, 12), align_corners=not align_corners), labels, IGNORE)
  np.testing.assert_allclose(float(total), float(expected), rtol=1e-6)
  assert abs(float(expected) - float(other)) > 1e-4
