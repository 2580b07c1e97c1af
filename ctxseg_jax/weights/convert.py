"""Strict matching of a state dict against the model's variables, through a layout's key map.

Strict by default: every tensor of the model in the layout's scope (the backbone for ImageNet layouts, everything
for whole-model layouts) is filled, and every tensor of the file is used or dropped by the layout. Otherwise
ImportMismatchError lists every missing, unexpected and shape-mismatched key with both shapes. `skip` patterns
(regexes searched in our path and in the file key) leave tensors out on both sides: a skipped model tensor keeps
its initialisation, as a head of another class count must.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import numpy as np
from flax import traverse_util

from ctxseg_jax.weights import layouts
from ctxseg_jax.weights.layouts import Layout

_SHOWN = 40


class ImportMismatchError(ValueError):
  """A weights file that does not fit the model; the message lists each problem and how to skip parts."""


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """{'params': {'backbone': {...}}} -> {'params/backbone/...': leaf}."""
  return traverse_util.flatten_dict(tree, sep='/')


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """The inverse of flatten."""
  return traverse_util.unflatten_dict(dict(flat), sep='/')


def in_scope(path: str, scope: str) -> bool:
  """Whether our flattened `path` is filled by an import of `scope` ('backbone' or 'model')."""
  return scope == 'model' or path.split('/')[1] == 'backbone'


def match(state: Mapping[str, np.ndarray], wanted: Mapping[str, tuple[int, ...]], *, layout: Layout | None,
          model_config, scope: str, skip: Iterable[str] = (),
          source: str = 'the weights file') -> dict[str, np.ndarray]:
  """{our path: float32 array in our layout} for every `wanted` path (ours -> shape) in `scope` and not skipped.

  `layout` None means the file is already keyed by our paths in our layout (a converted checkpoint).
  Raises ImportMismatchError naming `source` and every problem.
  """
  skip = [re.compile(pattern) for pattern in skip]
  skipped = lambda key: any(p.search(key) for p in skip)  # noqa: E731
  filled, used, problems = {}, set(), []
  for path, shape in sorted(wanted.items()):
    if not in_scope(path, scope):
      continue
    key = path if layout is None else layouts.source_key(layout, model_config, path)
    if skipped(path):
      used.add(key)  # the file's tensor for a skipped model tensor is skipped too
      continue
    if key is None:
      problems.append(f'no key of layout {layout.name!r} maps to the model\'s {path} {tuple(shape)}')
      continue
    if skipped(key):
      continue
    expected = tuple(shape) if layout is None else layouts.file_shape(tuple(shape), path)
    if key not in state:
      problems.append(f'missing in the file: {key} {expected} (for {path})')
      continue
    used.add(key)
    array = np.asarray(state[key])
    if tuple(array.shape) != expected:
      problems.append(f'shape mismatch: {key} is {tuple(array.shape)} in the file; the model\'s {path} needs '
                      f'{expected}')
      continue
    filled[path] = np.asarray(array if layout is None else layouts.to_ours(array, path), np.float32)
  dropped = [re.compile(p) for p in layouts.ALWAYS_DROPPED + (() if layout is None else layout.dropped)]
  for key in sorted(set(state) - used):
    if skipped(key) or any(p.fullmatch(key) for p in dropped):
      continue
    problems.append(f'not used by the model: {key} {tuple(np.shape(state[key]))}')
  if problems:
    shown = problems[:_SHOWN] + ([f'... and {len(problems) - _SHOWN} more'] if len(problems) > _SHOWN else [])
    name = 'converted checkpoint' if layout is None else f'layout {layout.name!r}'
    raise ImportMismatchError(
        f'{source} ({name}) does not fit the configured model ({len(problems)} problems):\n  ' + '\n  '.join(shown)
        + '\nLeave parts out with skip patterns (regexes over our paths or the file keys; --skip on the command line, '
        'config.model.pretrained_skip in training), e.g. conv_seg and se_layer for a head of another class count: '
        'a skipped model tensor keeps its initialisation.')
  return filled
