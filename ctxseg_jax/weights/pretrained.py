"""Pretrained weights for a configured model, from a published file or from a converted checkpoint.

A path is either a PyTorch (.pth/.pt) or .safetensors file, matched through its layout (detected from the keys,
or named), or a folder written by `python -m ctxseg_jax.tools.import_weights` (an Orbax checkpoint of our own
parameter tree, which records whether it holds a backbone or a whole model).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import numpy as np
from etils import epath

from ctxseg_jax.weights import convert, layouts, readers


@dataclasses.dataclass(frozen=True)
class Imported:
  """Arrays for part of a model.

  Attributes:
    variables: {our flattened path ('params/backbone/...'): float32 array in our layout}.
    scope: 'backbone' (an ImageNet backbone) or 'model'.
    layout: the source layout's name; 'converted' for a folder written by import_weights.
    source: the path read.
    sha256: of the source file ('' for a folder: its own record names the original file).
  """
  variables: dict[str, np.ndarray]
  scope: str
  layout: str
  source: str
  sha256: str


def shapes(variables: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """{flattened path: shape} of a {'params', 'batch_stats'} tree of arrays or ShapeDtypeStructs."""
  return {path: tuple(leaf.shape) for path, leaf in convert.flatten(variables).items()}


def load(path: str, model_config, wanted: Mapping[str, tuple[int, ...]], *, layout: str = '',
         skip: Iterable[str] = ()) -> Imported:
  """The arrays of `path` for the model of config.model `model_config`, whose variables have `wanted` shapes
  ({flattened path: shape}). Raises readers.WeightsFileError, layouts.LayoutError or convert.ImportMismatchError."""
  if epath.Path(path).is_dir():
    from ctxseg_jax.checkpoints import IMPORTED_KEY, Checkpointer
    checkpointer = Checkpointer(path, create=False)
    step, saved = checkpointer.saved_variables()
    scope = checkpointer.saved_config(step).get(IMPORTED_KEY, {}).get('scope', 'model')
    filled = convert.match(convert.flatten(saved), wanted, layout=None, model_config=model_config, scope=scope,
                           skip=skip, source=f'{path} (step {step})')
    return Imported(filled, scope, 'converted', str(path), '')
  state = readers.read_state_dict(path)
  chosen = layouts.get(layout or layouts.detect(state))
  filled = convert.match(state, wanted, layout=chosen, model_config=model_config, scope=chosen.scope, skip=skip,
                         source=str(path))
  return Imported(filled, chosen.scope, chosen.name, str(path), readers.sha256(path))


def overlay(variables: Mapping[str, Any], imported: Imported) -> dict[str, Any]:
  """`variables` ({'params', 'batch_stats'} trees) with the imported arrays in place of theirs."""
  flat = convert.flatten(variables)
  flat.update(imported.variables)
  return convert.unflatten(flat)


def describe(imported: Imported) -> str:
  """One line: what was loaded from where."""
  what = 'the backbone' if imported.scope == 'backbone' else 'the model'
  digest = f', sha256 {imported.sha256[:12]}' if imported.sha256 else ''
  return (f'{what} from {imported.source} ({imported.layout} layout, {len(imported.variables)} tensors{digest})')
