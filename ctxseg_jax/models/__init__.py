"""Models assembled from config.model: a backbone and an ordered set of named heads.

config.model holds `dtype`, `remat`, `backbone` (a BACKBONES config, chosen by its `name`) and `heads` (name -> a HEADS
config, chosen by its `type`). Heads run in `running_order`: inference heads before training-only ones, each after
the heads whose outputs it reads, otherwise by name. Every built model maps (B, H, W, 3) normalised images to a
dict of named outputs (see `Segmentor`): 'logits' always; training-only heads' outputs and 'stage_features' only
when called with train=True. Heads score pixels (segmentation) or whole images (classification: the 'classifier'
head), as their registry entry's `level` says; `task_problems` checks that a model's heads suit its dataset.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections

from ctxseg_jax import settings
from ctxseg_jax.models.backbones import BACKBONES
from ctxseg_jax.models.heads import HEADS, WIRING
from ctxseg_jax.models.layers.conv import RUNNING_VARS
from ctxseg_jax.models.segmentor import STAGE_FEATURES, HeadSpec, Segmentor

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
DTYPE = settings.Setting('float32', "compute dtype: 'float32' or 'bfloat16' (parameters stay float32)",
                         choices=tuple(DTYPES))
REMAT = settings.Setting(False, 'rematerialise the backbone in training: each block (ResNet) or module (HRNet) keeps '
                         'only its input for the backward pass and recomputes the rest, trading compute for memory '
                         '(parameters unchanged)')
BN_RUNNING_VAR = settings.Setting('unbiased', "BatchNorm running variance update in training: 'unbiased' (PyTorch, "
                                  "which every reference trains with) or 'biased' (Flax)", choices=RUNNING_VARS)


def model_config(backbone: ml_collections.ConfigDict,
                 heads: dict[str, ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
  """config.model from a backbone config and {head name: head config}."""
  config = ml_collections.ConfigDict()
  config.dtype = DTYPE.default
  config.remat = REMAT.default
  config.bn_running_var = BN_RUNNING_VAR.default
  config.backbone = backbone
  config.heads = ml_collections.ConfigDict(heads)
  # Weights the run starts from at step 0 (never over a resumed run): a PyTorch .pth/.pt or .safetensors file,
  # converted on the fly, or a folder written by ctxseg_jax.tools.import_weights. '' = none (see README).
  config.pretrained = ''
  config.pretrained_layout = ''   # the file's layout (ctxseg_jax.weights.layouts.LAYOUTS); '' = from its keys
  config.pretrained_skip = ()     # regexes of tensors left at their initialisation, e.g. ('conv_seg', 'se_layer')
  return config


def set_head(model: ml_collections.ConfigDict, name: str, head: ml_collections.ConfigDict | None) -> None:
  """Adds or replaces (a HEADS.config(...)) or removes (None) the head `name` of config.model."""
  settings.set_entry(model.heads, name, head)


def enabled_heads(heads: ml_collections.ConfigDict) -> list[str]:
  """The names of the heads that are part of the model (`enabled`)."""
  return [name for name, head in heads.items() if head.enabled]


def running_order(heads: ml_collections.ConfigDict) -> list[str]:
  """Enabled head names in the order they run: inference heads first, then training-only ones; a head after every
  head whose outputs it reads; otherwise by name. (A ConfigDict keeps its keys sorted, so the order is derived.)

  Raises ValueError when heads read each other's outputs in a cycle or read an output no enabled head publishes.
  """
  names = enabled_heads(heads)
  publisher = {output: name for name in names for output in heads[name].outputs}
  pending = sorted(names, key=lambda name: (heads[name].train_only, name))
  order: list[str] = []
  while pending:
    ready = next((name for name in pending
                  if all(publisher.get(output) in order for output in heads[name].reads_outputs)), None)
    if ready is None:
      raise ValueError(f'heads {pending} read each other\'s outputs in a cycle, or outputs no enabled head '
                       f'publishes (published: {sorted(publisher)})')
    order.append(ready)
    pending.remove(ready)
  return order


def head_outputs(model: ml_collections.ConfigDict, *, train: bool) -> list[str]:
  """The names of the outputs the model publishes when called with `train` (STAGE_FEATURES too in training)."""
  names = []
  for name in enabled_heads(model.heads):
    head = model.heads[name]
    if train or not head.train_only:
      published = dict(zip(HEADS[head.type].outputs, head.outputs))
      names += [published[local] for local in HEADS[head.type].outputs_present(head, train=train)]
  return names + [STAGE_FEATURES] if train else names


def problems(model: ml_collections.ConfigDict, prefix: str = 'model') -> list[str]:
  """Every problem of config.model: settings of the backbone and each head, and how the enabled heads are wired."""
  errors = []
  for key, setting in (('dtype', DTYPE), ('remat', REMAT), ('bn_running_var', BN_RUNNING_VAR)):
    problem = setting.problem(f'{prefix}.{key}', model[key])
    if problem:
      errors.append(problem)
  errors += BACKBONES.problems(f'{prefix}.backbone', model.backbone)
  for name, head in model.heads.items():
    errors += HEADS.problems(f'{prefix}.heads.{name}', head)
  if errors:
    return errors
  names = enabled_heads(model.heads)
  declared: dict[str, str] = {}  # output name -> the head that publishes it
  for name in names:
    head, key = model.heads[name], f'config.{prefix}.heads.{name}'
    local = HEADS[head.type].outputs
    if len(head.outputs) != len(local):
      errors.append(f'{key}.outputs={tuple(head.outputs)!r} must name each of the {head.type!r} head\'s outputs '
                    f'{local}, in order')
    for output in head.outputs:
      if output == STAGE_FEATURES:
        errors.append(f'{key}.outputs: {STAGE_FEATURES!r} is reserved for the backbone\'s stage outputs')
      elif output in declared:
        errors.append(f'{key}.outputs: {output!r} is already published by head {declared[output]!r}')
      declared[output] = name
  for name in names:
    for output in model.heads[name].reads_outputs:
      if output not in declared:
        errors.append(f'config.{prefix}.heads.{name}.reads_outputs names {output!r}, which no enabled head '
                      f'publishes (published: {sorted(declared)})')
  if errors:
    return errors
  try:
    running_order(model.heads)
  except ValueError as e:
    return [f'config.{prefix}.heads: {e}']
  num_stages = len(BACKBONES[model.backbone.name].outputs)
  in_training, at_inference = head_outputs(model, train=True), head_outputs(model, train=False)
  for name in names:
    head, key = model.heads[name], f'config.{prefix}.heads.{name}'
    head_type = HEADS[head.type]
    if any(not 0 <= i < num_stages for i in head.reads):
      errors.append(f'{key}.reads={tuple(head.reads)!r}: backbone {model.backbone.name!r} has stages '
                    f'0..{num_stages - 1}')
    if not head.reads and not head.reads_outputs:
      errors.append(f'{key} reads nothing: set reads (backbone stages) or reads_outputs')
    counts = head_type.feature_counts(head)
    given = 1 if head.input_transform == 'resize_concat' else len(head.reads)
    if head.reads and counts is not None and given not in counts:
      errors.append(f'{key}: the {head.type!r} head with these settings takes {" or ".join(map(str, counts))} '
                    f'feature map(s); reads={tuple(head.reads)!r} with input_transform='
                    f'{head.input_transform!r} gives {given}')
    if len(head.reads_outputs) != head_type.extra_inputs:
      errors.append(f'{key}.reads_outputs={tuple(head.reads_outputs)!r}: the {head.type!r} head takes '
                    f'{head_type.extra_inputs} output(s) of earlier heads')
    for output in head.reads_outputs:
      if output not in in_training:
        errors.append(f'{key} reads {output!r}, which its head does not return with these settings')
      elif not head.train_only and output not in at_inference:
        errors.append(f'{key} runs at inference but reads {output!r}, which exists only in training: set '
                      f'{key}.train_only=True or read an inference output')
  if not errors and 'logits' not in at_inference:
    errors.append(f'config.{prefix}.heads: no enabled inference head publishes "logits" (heads: {names})')
  return errors


# The HeadType.level that each dataset task (DatasetInfo.task) needs of every head.
HEAD_LEVELS = {'segmentation': 'pixel', 'classification': 'image'}


def task_problems(model: ml_collections.ConfigDict, task: str, dataset: str, prefix: str = 'model') -> list[str]:
  """The enabled heads that do not suit a dataset of `task` (named `dataset`): segmentation needs heads that score
  pixels, classification heads that score images (type 'classifier')."""
  level = HEAD_LEVELS[task]
  suited = sorted(name for name, head_type in HEADS.components.items() if head_type.level == level)
  return [f'config.{prefix}.heads.{name} is a {model.heads[name].type!r} head, which scores '
          f'{"images" if level == "pixel" else "pixels"}; data.name={dataset!r} is a {task} dataset, whose heads '
          f'are of type {suited} (or leave it out: --config.{prefix}.heads.{name}.enabled=False)'
          for name in enabled_heads(model.heads)
          if model.heads[name].type in HEADS and HEADS[model.heads[name].type].level != level]


def build_model(model: ml_collections.ConfigDict, num_classes: int) -> Segmentor:
  """Builds the Segmentor described by config.model for `num_classes` classes (disabled heads left out)."""
  errors = problems(model)
  if errors:
    raise ValueError('Invalid model config:\n  ' + '\n  '.join(errors))
  if num_classes < 1:
    raise ValueError(f'num_classes must be positive, got {num_classes}')
  dtype = DTYPES[model.dtype]
  heads = tuple(
      HeadSpec(name=name, module=HEADS[head.type].build(head, num_classes=num_classes, dtype=dtype),
               **{key: _frozen(head[key]) for key in WIRING if key != 'enabled'},
               local_outputs=HEADS[head.type].outputs)
      for name, head in ((name, model.heads[name]) for name in running_order(model.heads)))
  backbone = BACKBONES[model.backbone.name].build(model.backbone, dtype=dtype, remat=model.remat)
  return Segmentor(backbone=backbone, heads=heads,
                   bn_running_var=model.bn_running_var)


def _frozen(value: Any) -> Any:
  return tuple(value) if isinstance(value, list) else value
