"""The training system end to end, in process: sharding invariance, exact resume, non-finite stop, eval."""
import re

import jax
import numpy as np
import pytest

from ctxseg_jax import experiment, parallel, reporting, train
from ctxseg_jax.checkpoints import Checkpointer
from ctxseg_jax.config import ConfigError
from ctxseg_jax.data import datasets, pipeline
from ctxseg_jax.evaluate import evaluate
from ctxseg_jax.progress import NonFiniteLossError
from tests.tiny_config import get_config, use_contextrast, use_encnet, use_ocrnet


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _one_step(config, devices):
  exp = experiment.build(config, devices)
  source = datasets.build_source(config.data, 'train')
  host_batch = next(pipeline.train_iterator(source, config.data, config.train.batch_size, config.seed))
  state, metrics = exp.train_step(exp.init_state(), parallel.to_global(host_batch, exp.mesh))
  return state, jax.device_get(metrics)


# HRNet-OCR sums more float32 terms, in an order that depends on the sharding: its parameters after one step agree
# to 2e-5, while its largest update is about 1 (a per-device BN statistic or OHEM selection would move parameters
# by amounts of the update's size).
@pytest.mark.parametrize('make_config, atol', [(get_config, 1e-6), (lambda: use_ocrnet(get_config()), 2e-5),
                                               (lambda: use_contextrast(get_config()), 1e-6)],
                         ids=['fcn', 'hrnet_ocr', 'contextrast'])
def test_one_device_and_eight_devices_agree(make_config, atol):
  """Same global batch on 1 and on 8 devices: same loss, same update, same BatchNorm statistics (exact SyncBN);
  for OCRNet also the same OHEM selection, whose groups of 4 images span devices; for Contextrast the same
  anchors (means over the global batch) and the same negatives."""
  assert jax.device_count() >= 8, 'tests/conftest.py simulates 8 CPU devices'
  config = make_config()
  state_1, metrics_1 = _one_step(config, jax.devices()[:1])
  state_8, metrics_8 = _one_step(config, jax.devices()[:8])
  for name in (name for name in metrics_1 if name.startswith('loss')):  # the total and every term, each non-zero
    assert metrics_1[name] > 0 and metrics_1[name] == pytest.approx(metrics_8[name], rel=1e-5), name
  for a, b in zip(_leaves(state_1.params), _leaves(state_8.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol)
  for a, b in zip(_leaves(state_1.batch_stats), _leaves(state_8.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol)
  # The update itself is well above the tolerance, so agreement above is meaningful.
  init = experiment.build(config, jax.devices()[:1]).init_state()
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(_leaves(state_1.params), _leaves(init.params)))
  assert moved > 100 * atol


def _restore_final(config, workdir):
  exp = experiment.build(config, jax.devices()[:1])
  checkpointer = Checkpointer(workdir, create=False)
  step, state = checkpointer.restore(exp.abstract_state())
  checkpointer.close()
  return step, state


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  config = get_config()
  results = train.train(config, workdir, devices=jax.devices()[:1])
  return workdir, results


def test_interrupted_then_resumed_run_ends_with_identical_parameters(uninterrupted, tmp_path, monkeypatch):
  workdir_a, results_a = uninterrupted
  config = get_config()
  # Preempt at step 4 (between the step-3 checkpoint and the end): the run saves step 4 and returns.
  monkeypatch.setattr(train._Preemption, 'reached', lambda self, checkpointer, step: step == 4)
  assert train.train(config, tmp_path, devices=jax.devices()[:1]) == {}
  assert Checkpointer(tmp_path).latest_step() == 4
  monkeypatch.undo()
  results_b = train.train(config, tmp_path, devices=jax.devices()[:1])

  step_a, state_a = _restore_final(config, workdir_a)
  step_b, state_b = _restore_final(config, tmp_path)
  assert step_a == step_b == config.train.steps
  for a, b in zip(_leaves(state_a), _leaves(state_b)):
    np.testing.assert_array_equal(a, b)
  assert results_a['miou'] == results_b['miou']
  last_train = lambda w: [r for r in reporting.read_metrics(w) if r['split'] == 'train'][-1]
  assert last_train(workdir_a) == {**last_train(tmp_path), 'images_per_s': last_train(workdir_a)['images_per_s']}
  steps_logged = [r['step'] for r in reporting.read_metrics(tmp_path) if r['split'] == 'train']
  assert steps_logged == [2, 4, 6]  # the resumed run's records continue the interrupted one's, no duplicates


def test_eval_mode_reproduces_the_final_miou(uninterrupted):
  workdir, results = uninterrupted
  again = evaluate(get_config(), workdir)
  assert again['miou'] == results['miou']
  assert again == results
  records = [r for r in reporting.read_metrics(workdir) if r['split'] == 'eval']
  assert len(records) == 2 and records[0] == records[1]
  assert {'miou', 'macc', 'aacc', 'iou/ground', 'iou/person'} <= records[0].keys()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = get_config()
  config.optim.lr = 1e30
  config.train.checkpoint_every = 1
  config.train.log_every = 1
  with pytest.raises(NonFiniteLossError, match=r'non-finite loss at step (\d+)') as error:
    train.train(config, tmp_path, devices=jax.devices()[:1])
  bad_step = int(re.search(r'step (\d+)', str(error.value)).group(1))
  checkpointer = Checkpointer(tmp_path, create=False)
  assert checkpointer.latest_step() == bad_step - 1
  assert f'step {bad_step - 1}' in str(error.value)
  exp = experiment.build(config, jax.devices()[:1])
  _, state = checkpointer.restore(exp.abstract_state())
  assert all(np.all(np.isfinite(leaf)) for leaf in _leaves(state.params))


def test_resume_with_another_worker_count_is_refused(uninterrupted, tmp_path):
  config = get_config()
  config.train.steps = 3
  train.train(config, tmp_path, devices=jax.devices()[:1])
  config.train.steps = 6
  config.data.worker_count = 1
  with pytest.raises(Exception, match='worker_count=0'):
    train.train(config, tmp_path, devices=jax.devices()[:1])
  config.data.worker_count = 0
  config.optim.lr_mults = (('^(?!backbone/)', 10.0),)  # another grouping of the optimizer state
  with pytest.raises(ConfigError, match=r'written with config.optim.lr_mults=\[\]; the optimizer state is grouped'):
    train.train(config, tmp_path, devices=jax.devices()[:1])


def test_encnet_trains_end_to_end_with_se_loss(tmp_path):
  config = use_encnet(get_config())
  config.train.steps = 4
  config.train.checkpoint_every = 4
  results = train.train(config, tmp_path, devices=jax.devices()[:1])
  records = [r for r in reporting.read_metrics(tmp_path) if r['split'] == 'train']
  assert [r['step'] for r in records] == [2, 4]
  for record in records:
    assert {'loss', 'loss_ce', 'loss_aux', 'loss_se'} <= record.keys()
    assert all(np.isfinite(record[k]) for k in ('loss', 'loss_ce', 'loss_aux', 'loss_se'))
    assert record['loss'] == pytest.approx(record['loss_ce'] + record['loss_aux'] + record['loss_se'], rel=1e-5)
  assert 0 <= results['miou'] <= 100

