"""What a head type declares beside its settings: the outputs it returns and the inputs it takes."""
from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections

from ctxseg_jax import settings

Config = ml_collections.ConfigDict


def _all_outputs(config: Config, train: bool) -> None:
  del config, train
  return None


def _one_feature_map(config: Config) -> tuple[int, ...]:
  del config
  return (1,)


@dataclasses.dataclass(frozen=True)
class HeadType(settings.Component):
  """A head component (see settings.Component; `outputs` are the names the module returns, in order).

  Attributes:
    present: (head config, train) -> the outputs the module returns with those settings in that mode, or None for
      all of `outputs` (EncHead returns 'se_logits' only in training and only with its SE branch).
    feature_counts: head config -> how many backbone stages it takes with input_transform 'select' (one array
      for 1, a list otherwise), or None for any number.
    extra_inputs: how many outputs of earlier heads it takes after the features (`reads_outputs`).
    level: what its outputs score: 'pixel' (maps (B, h, w, K), for segmentation datasets) or 'image' (vectors
      (B, K), for classification datasets).
  """
  present: Callable[[Config, bool], tuple[str, ...] | None] = _all_outputs
  feature_counts: Callable[[Config], tuple[int, ...] | None] = _one_feature_map
  extra_inputs: int = 0
  level: str = 'pixel'

  def outputs_present(self, config: Config, *, train: bool) -> tuple[str, ...]:
    present = self.present(config, train)
    return self.outputs if present is None else tuple(present)
