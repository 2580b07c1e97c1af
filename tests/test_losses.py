import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy.special import logsumexp

from ctxseg_jax.losses import segmentation_loss
from ctxseg_jax.losses.cross_entropy import pixel_cross_entropy

IGNORE = 255


def _direct_ce(logits, labels, reduction):
  total, valid = 0.0, 0
  for idx in np.ndindex(labels.shape):
    if labels[idx] == IGNORE:
      continue
    total += logsumexp(logits[idx]) - logits[idx][labels[idx]]
    valid += 1
  return total / (max(valid, 1) if reduction == 'valid' else labels.size)


@pytest.mark.parametrize('reduction', ['valid', 'all'])
def test_pixel_cross_entropy_matches_direct_sum(reduction):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 6, 4)) * 3
  labels = rng.integers(0, 4, size=(2, 5, 6))
  labels[rng.random(labels.shape) < 0.3] = IGNORE
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
  config = ml_collections.ConfigDict({'ce_reduction': 'valid', 'aux_weight': 0.4})
  total, terms = segmentation_loss({'logits': logits, 'aux_logits': aux}, labels, config, IGNORE)
  main = pixel_cross_entropy(logits, labels, IGNORE)
  np.testing.assert_allclose(float(terms['loss_ce']), float(main), rtol=1e-6)
  np.testing.assert_allclose(float(terms['loss_aux']), 0.4 * float(pixel_cross_entropy(aux, labels, IGNORE)),
                             rtol=1e-6)
  np.testing.assert_allclose(float(total), float(terms['loss_ce'] + terms['loss_aux']), rtol=1e-6)
  small = jnp.asarray(rng.normal(size=(2, 2, 2, 3)), jnp.float32)  # stride-4 logits are upsampled to 8x8
  total_small, _ = segmentation_loss({'logits': small}, labels, config, IGNORE)
  assert np.isfinite(float(total_small))
