"""What train, evaluate and summary share: dataset metadata, mesh, model, loss, optimizer, and the jit-compiled
functions with their shardings (built here and nowhere else)."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import optax
from jax.sharding import Mesh

from ctxseg_jax import config as config_lib
from ctxseg_jax import inference, optim, parallel, steps
from ctxseg_jax.data import datasets, transforms
from ctxseg_jax.data.datasets.base import DatasetInfo
from ctxseg_jax.losses import LossFn, make_loss
from ctxseg_jax.models import build_model
from ctxseg_jax.models.layers import remat


@dataclasses.dataclass(frozen=True)
class Experiment:
  config: ml_collections.ConfigDict
  info: DatasetInfo
  mesh: Mesh
  model: nn.Module
  loss_fn: LossFn
  optimizer: optax.GradientTransformation

  @functools.cached_property
  def init_state(self) -> Callable[[], steps.TrainState]:
    """A jitted () -> TrainState, replicated over the mesh."""
    return jax.jit(functools.partial(steps.init_state, self.model, self.optimizer, self.config.seed,
                                     tuple(self.config.data.crop_size)),
                   out_shardings=parallel.replicated(self.mesh))

  def abstract_state(self) -> Any:
    """The TrainState's shapes, dtypes and shardings, computed without allocating it."""
    return jax.eval_shape(self.init_state)

  @functools.cached_property
  def train_step(self) -> Callable[[steps.TrainState, dict], tuple[steps.TrainState, dict]]:
    """Jitted (state, global batch) -> (new state, replicated scalar metrics); the input state is donated."""
    step = functools.partial(steps.train_step, model=self.model, optimizer=self.optimizer, loss_fn=self.loss_fn,
                             config=self.config)
    return parallel.InStep(jax.jit(
        step, in_shardings=(parallel.replicated(self.mesh), parallel.batch_sharded(self.mesh)),
        out_shardings=(parallel.replicated(self.mesh), parallel.replicated(self.mesh)), donate_argnums=0,
        compiler_options=remat.compiler_options(self.config.model.remat, self.mesh.devices.flat[0].platform)))

  @functools.cached_property
  def eval_step(self) -> Callable[[dict, dict], dict[str, Any]]:
    """Jitted (variables, global eval batch) -> replicated {'confusion': (K, K), ...} (see steps.eval_step, and
    steps.classification_eval_step for a classification dataset)."""
    return self._eval_step(per_image=False)

  @functools.cached_property
  def per_image_eval_step(self) -> Callable[[dict, dict], dict[str, Any]]:
    """eval_step whose result also holds each image's confusion matrix (steps.eval_step with per_image)."""
    return self._eval_step(per_image=True)

  def _eval_step(self, per_image: bool) -> Callable[[dict, dict], dict[str, Any]]:
    classes = dict(num_classes=self.info.num_classes, ignore_index=self.info.ignore_index)
    if self.info.task == 'classification':
      if per_image:
        raise ValueError('per-image evaluation scores segmentations; a classifier has no per-image scores')
      step = functools.partial(steps.classification_eval_step, model=self.model, config=self.config, **classes)
    else:
      step = functools.partial(steps.eval_step, model=self.model, config=self.config, per_image=per_image, **classes)
    return parallel.InStep(jax.jit(step, in_shardings=(parallel.replicated(self.mesh),
                                                        parallel.batch_sharded(self.mesh)),
                                   out_shardings=parallel.replicated(self.mesh)))

  @functools.cached_property
  def predict_step(self) -> Callable[[dict, dict], jax.Array]:
    """Jitted (variables, global eval batch, labels not needed) -> int32 (B, Lh, Lw) predicted classes at each
    image's original resolution, sharded on the batch (see steps.predict_step; (Lh, Lw) is the batch's label
    shape, or transforms.eval_label_size for a batch without labels). One program per (Lh, Lw); `lower(variables,
    batch)` lowers the batch's."""
    return _ByOutputShape(self, transforms.eval_label_size(self.config.data))

  @functools.cached_property
  def image_confusion_step(self) -> Callable[[jax.Array, jax.Array, jax.Array], dict[str, jax.Array]]:
    """Jitted (predictions int32 (B, Lh, Lw) from predict_step, labels uint8 (B, Lh, Lw), index int32 (B,), all
    sharded on the batch) -> replicated {'confusion': int32 (B, K, K) per image (see steps.image_confusions),
    'index': int32 (B,)}: every process sees every image's confusion."""
    def step(predictions, labels, index):
      return {'confusion': steps.image_confusions(predictions, labels, num_classes=self.info.num_classes,
                                                  ignore_index=self.info.ignore_index), 'index': index}
    return parallel.InStep(jax.jit(step, in_shardings=(parallel.batch_sharded(self.mesh),) * 3,
                                   out_shardings=parallel.replicated(self.mesh)))

  @functools.cached_property
  def predict(self) -> Callable[[dict, jax.Array], jax.Array]:
    """Jitted (variables, uint8 images (B, H, W, 3) sharded on the batch) -> logits (B, H, W, K), same sharding;
    a classifier's (B, K)."""
    score = inference.classify if self.info.task == 'classification' else inference.predict_logits
    fn = functools.partial(score, model=self.model, config=self.config)
    return parallel.InStep(jax.jit(fn, in_shardings=(parallel.replicated(self.mesh),
                                                      parallel.batch_sharded(self.mesh)),
                                   out_shardings=parallel.batch_sharded(self.mesh)))


class _ByOutputShape:
  """Experiment.predict_step: steps.predict_step jitted for each output shape it meets."""

  def __init__(self, exp: Experiment, default_shape: tuple[int, int]):
    self._exp, self._default_shape = exp, default_shape
    self._programs = {}

  def _program(self, batch: dict) -> Callable[[dict, dict], jax.Array]:
    out_shape = tuple(batch['label'].shape[1:3]) if 'label' in batch else self._default_shape
    if out_shape not in self._programs:
      mesh = self._exp.mesh
      step = functools.partial(steps.predict_step, out_shape=out_shape, model=self._exp.model,
                               config=self._exp.config)
      self._programs[out_shape] = parallel.InStep(jax.jit(
          step, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
          out_shardings=parallel.batch_sharded(mesh)))
    return self._programs[out_shape]

  def __call__(self, variables: dict, batch: dict) -> jax.Array:
    return self._program(batch)(variables, batch)

  def lower(self, variables: dict, batch: dict):
    return self._program(batch).lower(variables, batch)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """config.validate with the known datasets and, when the dataset is known, its number of classes and task."""
  info = datasets.dataset_info(config.data) if config.data.name in datasets.DATASETS else None
  config_lib.validate(config, known_datasets=datasets.DATASETS, num_classes=info and info.num_classes,
                      task=info and info.task)


def build(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Experiment:
  validate_config(config)
  info = datasets.dataset_info(config.data)
  return Experiment(config=config, info=info, mesh=parallel.make_mesh(devices),
                    model=build_model(config.model, info.num_classes),
                    loss_fn=make_loss(config.loss, ignore_index=info.ignore_index),
                    optimizer=optim.make_optimizer(config.optim, config.train.steps))
