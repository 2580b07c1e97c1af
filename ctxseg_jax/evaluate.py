"""Evaluation: a confusion matrix accumulated on device over the sharded eval split, then mIoU / mAcc / aAcc; with
config.eval.feature_metrics, also A / U / U_l of the features before the classifier (feature_metrics.py). For a
classification dataset the matrix counts images, and gives top-1 accuracy and error."""
from __future__ import annotations

from typing import Any

import numpy as np
from etils import epath

from ctxseg_jax import config as config_lib
from ctxseg_jax import experiment, feature_metrics, metrics, parallel, reporting, storage
from ctxseg_jax.checkpoints import Checkpointer
from ctxseg_jax.data import datasets, eval_plan, pipeline


# The eval metric that ranks checkpoints (best-checkpoint retention), by dataset task.
HEADLINE = {'segmentation': 'miou', 'classification': 'top1'}


class Evaluator:
  """Runs whole-image evaluation of the eval split for a given set of model variables."""

  def __init__(self, exp: experiment.Experiment):
    self.exp = exp
    config = exp.config
    self.source = datasets.build_source(config.data, config.data.eval_split)
    parallel.per_process_batch_size(config.eval.batch_size, exp.mesh, 'eval.batch_size')
    self._plan = None
    self.classification = exp.info.task == 'classification'
    self.headline = HEADLINE[exp.info.task]

  def run(self, variables: dict[str, Any], per_image: bool = False) -> dict[str, float]:
    """Metrics over the whole eval split: in percent (see metrics.segmentation_metrics, or for a classification
    dataset metrics.classification_metrics), and with config.eval.feature_metrics also feature_metrics.KEYS (see
    feature_metrics.feature_metrics). With `per_image`, each image's (K, K) confusion matrix is kept in
    self.image_confusions, by split index."""
    config = self.exp.config
    if self._plan is None:  # reads every image's size: once
      self._plan = eval_plan.plan(self.source, config.data, config.eval.batch_size, config.eval)
    batches, _ = pipeline.eval_batches(self.source, config.data, config.eval.batch_size, eval_config=config.eval,
                                       plan=self._plan)
    num_classes, names, convention = self.exp.info.num_classes, self.exp.info.class_names, config.eval.miou_convention
    confusion = metrics.ConfusionAccumulator(num_classes)
    boundaries = [metrics.ConfusionAccumulator(num_classes) for _ in config.eval.boundary_px]
    features = feature_metrics.FeatureAccumulator(config.eval.feature_neighbours)
    step = self.exp.per_image_eval_step if per_image else self.exp.eval_step
    self.image_confusions: dict[int, np.ndarray] = {}
    for host_batch in batches:
      result = step(variables, parallel.to_global(host_batch, self.exp.mesh))
      if per_image:
        for index, matrix in zip(np.asarray(result['index']).tolist(), np.asarray(result['image_confusion'])):
          if index < len(self.source):  # the rest pads the last batch
            self.image_confusions[index] = matrix
      pixels_per_batch = config.eval.batch_size * int(np.prod(host_batch['label'].shape[1:3]))
      confusion.add(result['confusion'], pixels_per_batch)
      for i, accumulator in enumerate(boundaries):
        accumulator.add(result['boundary'][i], pixels_per_batch)
      if 'features' in result:
        features.add(result['features'])
    if self.classification:
      return metrics.classification_metrics(confusion.result(), names)
    results = metrics.segmentation_metrics(confusion.result(), names, convention)
    for width, accumulator in zip(config.eval.boundary_px, boundaries):
      boundary = metrics.segmentation_metrics(accumulator.result(), names, convention)
      results[f'boundary_miou/{width}px'] = boundary['miou']
    if config.eval.feature_metrics:
      results.update(features.result())
    return results

  def report(self, step: int, results: dict[str, float], writer: reporting.MetricWriter) -> None:
    """Prints the per-class table and records the eval scalars at `step`."""
    config = self.exp.config
    if self.classification:
      table = metrics.format_classification_table(results, self.exp.info.class_names)
    else:
      table = metrics.format_table(results, self.exp.info.class_names, config.eval.miou_convention)
    if config.eval.boundary_px:
      table += '\nboundary mIoU (trimaps of ' + ', '.join(
          f'{w} px: {results[f"boundary_miou/{w}px"]:.2f}' for w in config.eval.boundary_px) + ')'
    if config.eval.feature_metrics:
      table += '\n' + feature_metrics.format_line(results, config.eval.feature_samples)
    reporting.console(f'Evaluation at step {step} on {self.exp.info.name}/{config.data.eval_split} '
                      f'({len(self.source)} images):\n{table}')
    # Per-class accuracies are recorded for a classifier only (a segmentation's per-class IoUs are).
    writer.write(step, 'eval', {k: v for k, v in results.items() if self.classification or not k.startswith('acc/')})


def restore_variables(exp: experiment.Experiment, workdir: str | epath.Path,
                      step: int | None = None) -> tuple[int, dict[str, Any]]:
  """(step, {'params', 'batch_stats'}) of checkpoint `step` (default: the latest) of `workdir`, placed with the
  shapes and shardings of `exp`'s train state: what evaluation and prediction run. The optimizer state is not
  read."""
  checkpointer = Checkpointer(workdir, create=False)
  try:
    abstract = exp.abstract_state()
    return checkpointer.restore_variables({'params': abstract.params, 'batch_stats': abstract.batch_stats}, step=step)
  finally:
    checkpointer.close()


def evaluate(config, workdir: str | epath.Path, step: int | None = None, *, output: str | None = None,
             worst: int = 0) -> dict[str, float]:
  """Restores the latest checkpoint of `workdir` (or `step`), evaluates it and appends the results to
  metrics.jsonl. With `output` (a folder), also writes there per_image.csv (each image's mIoU and per-class IoU,
  as --mode predict does) and, with `worst`, the predictions of the `worst` images of lowest mIoU (label PNG,
  overlay and image | prediction | ground truth comparison, named worst<rank>_<stem>)."""
  exp = experiment.build(config)
  if output and exp.info.task == 'classification':
    raise config_lib.ConfigError(f'--output writes per-image segmentation scores; data.name={config.data.name!r} is '
                                 'a classification dataset, whose evaluation is the table and metrics.jsonl alone')
  restored_step, variables = restore_variables(exp, workdir, step)
  storage.check_writable(workdir)  # before the work: the results are appended to metrics.jsonl
  if output:
    storage.check_writable(output, 'output folder')
  evaluator = Evaluator(exp)
  results = evaluator.run(variables, per_image=bool(output))
  writer = reporting.MetricWriter(workdir)
  evaluator.report(restored_step, results, writer)
  writer.close()
  if output:
    from ctxseg_jax import predict
    predict.write_per_image_results(exp, variables, evaluator.source, evaluator.image_confusions, output, worst)
  return results
