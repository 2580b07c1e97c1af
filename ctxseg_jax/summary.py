"""`--mode summary`: parameter counts and inference FLOPs from shapes alone (jax.eval_shape + XLA cost analysis)."""
from __future__ import annotations

import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from ctxseg_jax import experiment, reporting, storage


def count_params(tree: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def abstract_variables(model: nn.Module, config: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """The model's variables as shapes, without allocating them: (train-mode init on one crop, eval-mode init on
  one image of config.data.eval_size). Training-only heads exist only in the first."""
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  crop = jax.ShapeDtypeStruct((1, *config.data.crop_size, 3), jnp.float32)
  image = jax.ShapeDtypeStruct((1, *config.data.eval_size, 3), jnp.float32)
  train_vars = jax.eval_shape(lambda x: model.init(rngs, x, train=True), crop)
  infer_vars = jax.eval_shape(lambda x: model.init(rngs, x, train=False), image)
  return train_vars, infer_vars


def parameter_counts(config: ml_collections.ConfigDict) -> dict[str, int]:
  """{'params_total', 'params_inference'} of `summarize`, from shapes alone (no FLOP count, no compilation)."""
  train_vars, infer_vars = abstract_variables(experiment.build(config).model, config)
  return {'params_total': count_params(train_vars['params']), 'params_inference': count_params(infer_vars['params'])}


def summarize(config: ml_collections.ConfigDict, workdir: str | epath.Path | None = None) -> dict[str, Any]:
  """Counts parameters (all, and those inference uses) and the XLA FLOPs of one inference forward.

  params_total: every trainable parameter, training-only heads included (the model initialised in train mode).
  params_inference: the parameters eval and predict use (initialised in eval mode: training-only heads absent).
  flops_inference: XLA's FLOP count (a multiply-add counts 2) of the inference path (inference.predict_logits,
  config.eval.mode) for one image of config.data.eval_size.
  Writes <workdir>/summary.json when workdir is given.
  """
  if workdir is not None:
    storage.check_writable(workdir)
  exp = experiment.build(config, jax.devices()[:1])  # one image: one device
  eval_image = jax.ShapeDtypeStruct((1, *config.data.eval_size, 3), jnp.uint8)
  train_vars, infer_vars = abstract_variables(exp.model, config)
  cost = exp.predict.lower(infer_vars, eval_image).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  summary = {
      'config': config.name,
      'num_classes': exp.info.num_classes,
      'params_total': count_params(train_vars['params']),
      'params_inference': count_params(infer_vars['params']),
      'params_by_module': {name: count_params(tree) for name, tree in train_vars['params'].items()},
      'flops_inference': float(cost['flops']),
      'eval_size': list(config.data.eval_size),
  }
  reporting.console(_format(summary))
  if workdir is not None and jax.process_index() == 0:
    path = epath.Path(workdir) / 'summary.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + '\n')
  return summary


def _format(summary: dict[str, Any]) -> str:
  lines = [f'{summary["config"]}: {summary["num_classes"]} classes']
  for name, count in summary['params_by_module'].items():
    lines.append(f'  {name:<20}{count:>14,} params')
  lines.append(f'  {"total":<20}{summary["params_total"]:>14,} params (training, all heads)')
  lines.append(f'  {"inference":<20}{summary["params_inference"]:>14,} params')
  height, width = summary['eval_size']
  lines.append(f'  {"inference FLOPs":<20}{summary["flops_inference"] / 1e9:>14,.2f} GFLOPs per {height}x{width} '
               f'image (XLA count, multiply-add = 2)')
  return '\n'.join(lines)
