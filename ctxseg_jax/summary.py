"""`--mode summary`: parameter counts, inference FLOPs, and the memory per device of the compiled train and eval
steps, from shapes alone (jax.eval_shape, XLA's cost and memory analyses of compiled programs: nothing runs)."""
from __future__ import annotations

import json
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from ctxseg_jax import experiment, parallel, reporting, storage
from ctxseg_jax.data import pipeline, transforms

MIB = 2**20


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


def batch_specs(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                task: str = 'segmentation') -> tuple[dict, dict]:
  """(train batch, eval batch): abstract global batches (jax.ShapeDtypeStruct) of the config's global batch sizes,
  with the shapes and dtypes its input pipeline gives (its train augmentation and eval preprocessing applied to a
  placeholder image of the eval label size). The eval batch is the largest the config allows (no shape bucket).

  Raises ConfigError naming the key when a global batch size is not a multiple of the mesh's devices.
  """
  parallel.per_process_batch_size(config.train.batch_size, mesh, 'train.batch_size')
  parallel.per_process_batch_size(config.eval.batch_size, mesh, 'eval.batch_size')
  size = transforms.eval_label_size(config.data)  # the largest original image an eval batch holds
  label = np.int32(0) if task == 'classification' else np.zeros(size, np.uint8)
  sample = {'image': np.zeros((*size, 3), np.uint8), 'label': label}
  train = pipeline.train_augment(config.data, task).random_map(sample, np.random.default_rng(0))
  evaluation = pipeline.eval_preprocess(config.data, config.eval, task).map({**sample, 'index': 0})
  batched = lambda example, size: {  # noqa: E731
      key: jax.ShapeDtypeStruct((size, *np.shape(value)), np.asarray(value).dtype) for key, value in example.items()}
  return batched(train, config.train.batch_size), batched(evaluation, config.eval.batch_size)


def compiled_memory(step: Any, *args: Any) -> dict[str, int | float] | None:
  """XLA's memory analysis of the jitted `step` compiled for abstract `args`, per device, in bytes: arguments,
  outputs, the part of the outputs that reuses donated argument buffers ('alias'), temporaries, generated code,
  and their total (arguments + outputs - alias + temporaries + code: what the step holds at once), with the
  seconds lowering and compiling took. None when the backend gives no memory analysis."""
  start = time.perf_counter()
  compiled = step.lower(*args).compile()
  seconds = time.perf_counter() - start
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  memory = {'argument_bytes': stats.argument_size_in_bytes, 'output_bytes': stats.output_size_in_bytes,
            'alias_bytes': stats.alias_size_in_bytes, 'temp_bytes': stats.temp_size_in_bytes,
            'code_bytes': stats.generated_code_size_in_bytes}
  memory['total_bytes'] = (memory['argument_bytes'] + memory['output_bytes'] - memory['alias_bytes']
                           + memory['temp_bytes'] + memory['code_bytes'])
  return {**{key: int(value) for key, value in memory.items()}, 'compile_seconds': round(seconds, 1)}


def step_memory(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The memory per device of the train step (with and without config.model.remat) and of the eval step, compiled
  by experiment.build for a mesh over every device (jax.devices()) with the config's global batch sizes and crop.

  Returns {'devices', 'platform', 'train_batch_per_device', 'train_image_size' (the crop), 'eval_batch_per_device',
  'eval_image_size' (the eval batch's image canvas), 'remat' (the config's), 'train' (model.remat False),
  'train_remat' (True), 'eval'}, each step's figures those of `compiled_memory`.
  """
  exp = experiment.build(config)
  devices = exp.mesh.devices.size
  train_batch, eval_batch = batch_specs(config, exp.mesh, exp.info.task)
  state = exp.abstract_state()
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  memory = {'devices': devices, 'platform': exp.mesh.devices.flat[0].platform,
            'train_batch_per_device': config.train.batch_size // devices,
            'train_image_size': list(train_batch['image'].shape[1:3]),
            'eval_batch_per_device': config.eval.batch_size // devices,
            'eval_image_size': list(eval_batch['image'].shape[1:3]), 'remat': bool(config.model.remat)}
  where = f'for {devices} {memory["platform"]} device(s)'
  for key, remat in (('train', False), ('train_remat', True)):
    variant = config.copy_and_resolve_references()
    variant.model.remat = remat
    built = exp if remat == config.model.remat else experiment.build(variant)
    reporting.console(f'Compiling the train step (model.remat={remat}) {where}...')
    memory[key] = compiled_memory(built.train_step, state, train_batch)
  reporting.console(f'Compiling the eval step {where}...')
  memory['eval'] = compiled_memory(exp.eval_step, variables, eval_batch)
  return memory


def summarize(config: ml_collections.ConfigDict, workdir: str | epath.Path | None = None, *,
              memory: bool = True) -> dict[str, Any]:
  """Counts parameters (all, and those inference uses), the XLA FLOPs of one inference forward and, with
  `memory`, the memory per device of the compiled train and eval steps.

  params_total: every trainable parameter, training-only heads included (the model initialised in train mode).
  params_inference: the parameters eval and predict use (initialised in eval mode: training-only heads absent).
  flops_inference: XLA's FLOP count (a multiply-add counts 2) of the inference path (inference.predict_logits,
  config.eval.mode) for one image of config.data.eval_size.
  memory: `step_memory`, for the devices this process sees (several simulated CPU devices: main.py's
  --simulate_devices, or XLA_FLAGS=--xla_force_host_platform_device_count=N).
  Writes <workdir>/summary.json when workdir is given.
  """
  if workdir is not None:
    storage.check_writable(workdir)
  step_memories = step_memory(config) if memory else None  # first: it checks the batch sizes
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
      'dtype': config.model.dtype,
  }
  if step_memories is not None:
    summary['memory'] = step_memories
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
  if 'memory' in summary:
    lines += _format_memory(summary['memory'], summary['dtype'])
  return '\n'.join(lines)


def _format_memory(memory: dict[str, Any], dtype: str) -> list[str]:
  """The memory table of a summary (`step_memory`'s figures): one row per compiled step, MiB per device."""
  crop, image = ('x'.join(map(str, memory[key])) for key in ('train_image_size', 'eval_image_size'))
  lines = [f'  memory per device, MiB (XLA memory analysis of the compiled step; {memory["devices"]} '
           f'{memory["platform"]} device(s), model.dtype {dtype}):',
           f'    {"step":<44}{"arguments":>10}{"outputs":>10}{"aliased":>10}{"temp":>10}{"code":>8}{"total":>10}'
           f'{"compile":>10}']
  rows = (('train', f'train, {memory["train_batch_per_device"]} x {crop} crop, remat off'),
          ('train_remat', f'train, {memory["train_batch_per_device"]} x {crop} crop, remat on'),
          ('eval', f'eval, {memory["eval_batch_per_device"]} x {image} image'))
  for key, label in rows:
    if key.startswith('train') and (key == 'train_remat') == memory['remat']:
      label += ' (config)'
    figures = memory[key]
    if figures is None:
      lines.append(f'    {label:<44}not available on this backend')
      continue
    lines.append(f'    {label:<44}' + ''.join(
        f'{figures[name] / MIB:>{width},.1f}' for name, width in (
            ('argument_bytes', 10), ('output_bytes', 10), ('alias_bytes', 10), ('temp_bytes', 10), ('code_bytes', 8),
            ('total_bytes', 10))) + f'{figures["compile_seconds"]:>9.1f}s')
  return lines
