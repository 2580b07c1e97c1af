"""What train, evaluate and summary share: dataset metadata, mesh, model, optimizer and the state's shapes."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
import optax
from jax.sharding import Mesh

from ctxseg_jax import config as config_lib
from ctxseg_jax import models, optim, parallel, steps
from ctxseg_jax.data import datasets
from ctxseg_jax.data.datasets.base import DatasetInfo


@dataclasses.dataclass(frozen=True)
class Experiment:
  config: ml_collections.ConfigDict
  info: DatasetInfo
  mesh: Mesh
  model: nn.Module
  optimizer: optax.GradientTransformation

  @functools.cached_property
  def init_state(self):
    """A jitted () -> TrainState, replicated over the mesh."""
    return jax.jit(functools.partial(steps.init_state, self.model, self.optimizer, self.config.seed,
                                     tuple(self.config.data.crop_size)),
                   out_shardings=parallel.replicated(self.mesh))

  def abstract_state(self) -> Any:
    """The TrainState's shapes, dtypes and shardings, computed without allocating it."""
    return jax.eval_shape(self.init_state)


def validate_config(config: ml_collections.ConfigDict) -> None:
  config_lib.validate(config, known_datasets=datasets.DATASETS, known_models=models.MODELS)


def build(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Experiment:
  validate_config(config)
  info = datasets.dataset_info(config.data)
  return Experiment(config=config, info=info, mesh=parallel.make_mesh(devices),
               model=models.build_model(config.model, info.num_classes),
               optimizer=optim.make_optimizer(config.optim, config.train.steps))
