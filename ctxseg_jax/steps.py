"""The train state and the pure functions jit-compiled over the mesh: init, one train step, one eval step."""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ctxseg_jax import metrics
from ctxseg_jax.losses import segmentation_loss
from ctxseg_jax.models.layers.resize import resize_bilinear, resize_bilinear_regions


class TrainState(flax.struct.PyTreeNode):
  """Everything a step changes. The dropout RNG is not state: step t uses fold_in(key(seed), t)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def normalize(images: jax.Array, mean, std) -> jax.Array:
  """uint8 (B, H, W, 3) -> float32 (x - mean) / std."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) - mean) / std


def init_state(model: nn.Module, optimizer: optax.GradientTransformation, seed: int,
               image_shape: tuple[int, int]) -> TrainState:
  """Initialises every parameter (training-only heads included) from `seed`."""
  params_key, dropout_key = jax.random.split(jax.random.key(seed))
  dummy = jnp.zeros((1, *image_shape, 3), jnp.float32)
  variables = model.init({'params': params_key, 'dropout': dropout_key}, dummy, train=True)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=optimizer.init(params))


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               optimizer: optax.GradientTransformation, config: ml_collections.ConfigDict,
               ignore_index: int) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a global batch {'image': uint8 (B, H, W, 3), 'label': uint8 (B, H, W)}.

  Returns the new state and scalar metrics: 'loss' (the total) and its weighted terms ('loss_ce', ...).
  """
  images = normalize(batch['image'], config.data.mean, config.data.std)
  labels = batch['label'].astype(jnp.int32)
  dropout_key = jax.random.fold_in(jax.random.key(config.seed), state.step)

  def loss_fn(params):
    outputs, updates = model.apply({'params': params, 'batch_stats': state.batch_stats}, images, train=True,
                                   rngs={'dropout': dropout_key}, mutable=['batch_stats'])
    total, terms = segmentation_loss(outputs, labels, config.loss, ignore_index)
    return total, (terms, updates['batch_stats'])

  (loss, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
  return new_state, {'loss': loss, **terms}


def predict_logits(variables: dict, images: jax.Array, *, model: nn.Module,
                   config: ml_collections.ConfigDict) -> jax.Array:
  """Inference: uint8 (B, H, W, 3) -> float32 logits (B, H, W, K) at input resolution ('logits' output only)."""
  outputs = model.apply(variables, normalize(images, config.data.mean, config.data.std), train=False)
  return resize_bilinear(outputs['logits'], images.shape[1:3])


def eval_step(variables: dict, batch: dict[str, jax.Array], *, model: nn.Module,
              config: ml_collections.ConfigDict, num_classes: int, ignore_index: int) -> jax.Array:
  """The (K, K) int32 confusion matrix of one global batch.

  The batch is {'image': uint8 (B, H, W, 3), 'label': uint8 (B, Lh, Lw), 'image_size': int (B, 2),
  'label_size': int (B, 2)}. When the image was resized for evaluation (config.data.eval_scale) or the label is
  padded to another size, the logits of each image's region are resized back to its original label size first,
  so scoring happens at the original resolution, as mmseg, HRNet and PyTorch-Encoding do.
  """
  logits = predict_logits(variables, batch['image'], model=model, config=config)
  label_shape = batch['label'].shape[1:3]
  if any(config.data.eval_scale) or label_shape != logits.shape[1:3]:
    logits = resize_bilinear_regions(logits, batch['image_size'], batch['label_size'], label_shape)
  return metrics.confusion_matrix(jnp.argmax(logits, axis=-1), batch['label'], num_classes, ignore_index)
