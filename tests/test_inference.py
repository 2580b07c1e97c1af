"""The one inference path: the eval step and predictions on unlabelled images agree."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctxseg_jax import experiment, inference, metrics, parallel
from ctxseg_jax.data import datasets, pipeline
from tests.tiny_config import get_config


class _Unlabelled:
  """A source whose samples carry no label, as images to predict do."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    return {k: v for k, v in self.source[index].items() if k != 'label'}


def test_eval_step_scores_exactly_the_predictions_of_unlabelled_images():
  config = get_config()
  config.data.eval_scale = (24, 24)  # resized for inference, scored at the original 32x32
  config.data.eval_size = (24, 24)
  config.data.eval_label_size = (32, 32)
  exp = experiment.build(config, jax.devices()[:1])
  state = exp.init_state()
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  source = datasets.build_source(config.data, 'val')
  labelled, _ = pipeline.eval_batches(source, config.data, 4, process_index=0, process_count=1)
  unlabelled, _ = pipeline.eval_batches(_Unlabelled(source), config.data, 4, process_index=0, process_count=1)
  num_classes = exp.info.num_classes
  for with_label, without_label in zip(labelled, unlabelled):
    assert 'label' not in without_label and set(with_label) == set(without_label) | {'label'}
    for key in without_label:
      np.testing.assert_array_equal(with_label[key], without_label[key])
    batch = parallel.to_global(without_label, exp.mesh)
    logits = exp.predict(variables, batch['image'])
    assert logits.shape == (4, 24, 24, num_classes)
    logits = inference.logits_at_original_size(logits, batch['image_size'], batch['original_size'], (32, 32),
                                               config)
    predicted = jnp.argmax(logits, axis=-1)
    np.testing.assert_array_equal(np.asarray(exp.predict_step(variables, batch)), np.asarray(predicted))
    expected = metrics.confusion_matrix(predicted, jnp.asarray(with_label['label']), num_classes, 255)
    got = exp.eval_step(variables, parallel.to_global(with_label, exp.mesh))['confusion']
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    assert int(np.asarray(got).sum()) > 0


def test_boundary_miou_per_width_and_the_whole_image_at_a_width_beyond_its_diagonal():
  from ctxseg_jax.evaluate import Evaluator
  config = get_config()
  config.eval.boundary_px = (1, 3, 46)  # 46 > the diagonal of the 32x32 images
  exp = experiment.build(config, jax.devices()[:1])
  state = exp.init_state()
  results = Evaluator(exp).run({'params': state.params, 'batch_stats': state.batch_stats})
  assert all(0 <= results[f'boundary_miou/{w}px'] <= 100 for w in (1, 3))
  assert results['boundary_miou/1px'] != results['boundary_miou/3px']
  assert results['boundary_miou/46px'] == pytest.approx(results['miou'], abs=1e-9)
