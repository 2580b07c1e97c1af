"""What a loss-term type declares beside its settings: the model outputs a term config reads."""
from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections

from ctxseg_jax import settings

Config = ml_collections.ConfigDict


def _its_output(config: Config) -> dict[str, str]:
  return {'output': config.output}


@dataclasses.dataclass(frozen=True)
class TermType(settings.Component):
  """A loss-term component (see settings.Component).

  Attributes:
    reads: term config -> {setting: model output name} for every output the term reads, checked against the
      model's training outputs (default: the common 'output' setting alone).
  """
  reads: Callable[[Config], dict[str, str]] = _its_output
