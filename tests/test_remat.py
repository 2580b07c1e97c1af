"""model.remat: the backbone's blocks rematerialised in training, with the same parameters, statistics, losses and
gradients (its memory saving, on the CPU backend too, is checked on the compiled demo step in test_summary.py)."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from ctxseg_jax import experiment
from tests.tiny_config import get_config, use_ocrnet

BACKBONES = {'resnet': lambda config: config, 'hrnet': use_ocrnet}


def _experiments(backbone: str) -> tuple[experiment.Experiment, experiment.Experiment]:
  plain, rematerialised = (BACKBONES[backbone](get_config()) for _ in range(2))
  rematerialised.model.remat = True
  return tuple(experiment.build(config, jax.devices()[:1]) for config in (plain, rematerialised))


@pytest.mark.parametrize('backbone', BACKBONES)
def test_remat_keeps_the_state_tree(backbone):
  plain, rematerialised = (exp.abstract_state() for exp in _experiments(backbone))
  assert jax.tree.structure(plain) == jax.tree.structure(rematerialised)
  assert [(a.shape, a.dtype) for a in jax.tree.leaves(plain)] == [
      (b.shape, b.dtype) for b in jax.tree.leaves(rematerialised)]


def test_remat_train_step_equals_the_plain_one():
  """Same initial state, same losses and the same state after two steps (ResNet: every block and the stem
  rematerialised)."""
  plain, rematerialised = _experiments('resnet')
  for a, b in zip(jax.tree.leaves(plain.init_state()), jax.tree.leaves(rematerialised.init_state())):
    np.testing.assert_array_equal(a, b)
  rng = np.random.default_rng(0)
  batches = [{'image': rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
              'label': rng.integers(0, 8, (8, 32, 32), dtype=np.uint8)} for _ in range(2)]
  results = []
  for exp in (plain, rematerialised):
    state, losses = exp.init_state(), []
    for batch in batches:
      state, metrics = exp.train_step(state, batch)
      losses.append(float(metrics['loss']))
    results.append((state, losses))
  (plain_state, plain_losses), (remat_state, remat_losses) = results
  np.testing.assert_allclose(remat_losses, plain_losses, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(plain_state), jax.tree.leaves(remat_state)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)

