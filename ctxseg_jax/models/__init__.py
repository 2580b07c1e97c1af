"""Segmentation models assembled from config.model: a backbone and an ordered set of named heads.

config.model holds `dtype`, `backbone` (a BACKBONES config, chosen by its `name`) and `heads` (name -> a HEADS
config, chosen by its `type`). Heads run in `running_order`: inference heads before training-only ones, each after
the heads whose outputs it reads, otherwise by name. Every built model maps (B, H, W, 3) normalised images to a
dict of named outputs (see `Segmentor`): 'logits' always; training-only heads' outputs and 'stage_features' only
when called with train=True.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections

from ctxseg_jax import settings
from ctxseg_jax.models.backbones import BACKBONES
from ctxseg_jax.models.heads import HEADS, WIRING
from ctxseg_jax.models.segmentor import STAGE_FEATURES, HeadSpec, Segmentor

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
DTYPE = settings.Setting('float32', "compute dtype: 'float32' or 'bfloat16' (parameters stay float32)",
                         choices=tuple(DTYPES))


def model_config(backbone: ml_collections.ConfigDict,
                 heads: dict[str, ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
  """config.model from a backbone config and {head name: head config}."""
  config = ml_collections.ConfigDict()
  config.dtype = DTYPE.default
  config.backbone = backbone
  config.heads = ml_collections.ConfigDict(heads)
  return config


def set_head(model: ml_collections.ConfigDict, name: str, head: ml_collections.ConfigDict | None) -> None:
  """Adds or replaces (a HEADS.config(...)) or removes (None) the head `name` of config.model."""
  settings.set_entry(model.heads, name, head)


def running_order(heads: ml_collections.ConfigDict) -> list[str]:
  """Head names in the order they run: inference heads first, then training-only ones; a head after every head
  whose outputs it reads; otherwise by name. (A ConfigDict keeps its keys sorted, so the order is derived.)

  Raises ValueError when heads read each other's outputs in a cycle or read an output no head publishes.
  """
  publisher = {output: name for name, head in heads.items() for output in head.outputs}
  pending = sorted(heads.keys(), key=lambda name: (heads[name].train_only, name))
  order: list[str] = []
  while pending:
    ready = next((name for name in pending
                  if all(publisher.get(output) in order for output in heads[name].reads_outputs)), None)
    if ready is None:
      raise ValueError(f'heads {pending} read each other\'s outputs in a cycle, or outputs no head publishes '
                       f'(published: {sorted(publisher)})')
    order.append(ready)
    pending.remove(ready)
  return order


def head_outputs(model: ml_collections.ConfigDict, *, train: bool) -> list[str]:
  """The names of the outputs the model publishes when called with `train`."""
  names = [name for head in model.heads.values() if train or not head.train_only for name in head.outputs]
  return names + [STAGE_FEATURES] if train else names


def problems(model: ml_collections.ConfigDict, prefix: str = 'model') -> list[str]:
  """Every problem of config.model: settings of the backbone and each head, and how the heads are wired."""
  errors = []
  problem = DTYPE.problem(f'{prefix}.dtype', model.dtype)
  if problem:
    errors.append(problem)
  errors += BACKBONES.problems(f'{prefix}.backbone', model.backbone)
  for name, head in model.heads.items():
    errors += HEADS.problems(f'{prefix}.heads.{name}', head)
  if errors:
    return errors
  num_stages = len(BACKBONES[model.backbone.name].outputs)
  all_published = {output for head in model.heads.values() for output in head.outputs}
  for name, head in model.heads.items():
    key = f'config.{prefix}.heads.{name}'
    for output in head.reads_outputs:
      if output not in all_published:
        errors.append(f'{key}.reads_outputs names {output!r}, which no head publishes (published: '
                      f'{sorted(all_published)})')
  if errors:
    return errors
  try:
    order = running_order(model.heads)
  except ValueError as e:
    return [f'config.{prefix}.heads: {e}']
  published: dict[str, bool] = {}  # output name -> written by a training-only head
  for name in order:
    head = model.heads[name]
    key = f'config.{prefix}.heads.{name}'
    bad = [i for i in head.reads if not 0 <= i < num_stages]
    if bad:
      errors.append(f'{key}.reads={tuple(head.reads)!r}: backbone {model.backbone.name!r} has stages '
                    f'0..{num_stages - 1}')
    if not head.reads and not head.reads_outputs:
      errors.append(f'{key} reads nothing: set reads (backbone stages) or reads_outputs')
    for output in head.reads_outputs:
      if published.get(output) and not head.train_only:
        errors.append(f'{key} runs at inference but reads {output!r}, a training-only output: set '
                      f'{key}.train_only=True or read an inference output')
    local = HEADS[head.type].outputs
    if len(head.outputs) != len(local):
      errors.append(f'{key}.outputs={tuple(head.outputs)!r} must name each of the {head.type!r} head\'s outputs '
                    f'{local}, in order')
    for output in head.outputs:
      if output in published or output == STAGE_FEATURES:
        errors.append(f'{key}.outputs: {output!r} is already published by another head')
      published[output] = head.train_only
  if not errors and published.get('logits', True):
    errors.append(f'config.{prefix}.heads: no inference head publishes "logits" (heads: {list(model.heads)})')
  return errors


def build_model(model: ml_collections.ConfigDict, num_classes: int) -> Segmentor:
  """Builds the Segmentor described by config.model for `num_classes` classes."""
  errors = problems(model)
  if errors:
    raise ValueError('Invalid model config:\n  ' + '\n  '.join(errors))
  if num_classes < 1:
    raise ValueError(f'num_classes must be positive, got {num_classes}')
  dtype = DTYPES[model.dtype]
  heads = tuple(
      HeadSpec(name=name, module=HEADS[head.type].build(head, num_classes=num_classes, dtype=dtype),
               **{key: _frozen(head[key]) for key in WIRING}, local_outputs=HEADS[head.type].outputs)
      for name, head in ((name, model.heads[name]) for name in running_order(model.heads)))
  return Segmentor(backbone=BACKBONES[model.backbone.name].build(model.backbone, dtype=dtype), heads=heads)


def _frozen(value: Any) -> Any:
  return tuple(value) if isinstance(value, list) else value
