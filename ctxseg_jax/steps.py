"""The train state and the pure functions jit-compiled over the mesh (see experiment.py): init, one train step,
one eval step (segmentation or classification), one predict step and per-image confusion matrices."""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ctxseg_jax import feature_metrics, inference, metrics
from ctxseg_jax.losses import LossFn


class TrainState(flax.struct.PyTreeNode):
  """Everything a step changes. The dropout RNG is not state: step t uses fold_in(key(seed), t)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def init_state(model: nn.Module, optimizer: optax.GradientTransformation, seed: int,
               image_shape: tuple[int, int]) -> TrainState:
  """Initialises every parameter (training-only heads included) from `seed`."""
  params_key, dropout_key = jax.random.split(jax.random.key(seed))
  dummy = jnp.zeros((1, *image_shape, 3), jnp.float32)
  variables = model.init({'params': params_key, 'dropout': dropout_key}, dummy, train=True)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=optimizer.init(params))


def step_keys(seed: int, step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(dropout key, loss key) of a step, both functions of (seed, step) alone, so a resumed run draws the same."""
  step_key = jax.random.fold_in(jax.random.key(seed), step)
  return step_key, jax.random.fold_in(step_key, 1)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               optimizer: optax.GradientTransformation, loss_fn: LossFn,
               config: ml_collections.ConfigDict) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a global batch {'image': uint8 (B, H, W, 3), 'label': uint8 (B, H, W)} (a classification
  dataset's: 'label' int32 (B,)).

  Returns the new state and scalar metrics: 'loss' (the total) and what the loss terms log ('loss_ce', ...).
  """
  inputs = {'image': inference.normalize(batch['image'], config.data.mean, config.data.std),
            'label': batch['label'].astype(jnp.int32)}
  dropout_key, loss_key = step_keys(config.seed, state.step)

  def objective(params):
    outputs, updates = model.apply({'params': params, 'batch_stats': state.batch_stats}, inputs['image'],
                                   train=True, rngs={'dropout': dropout_key}, mutable=['batch_stats'])
    total, logs = loss_fn(outputs, inputs, state.step, loss_key)
    return total, (logs, updates['batch_stats'])

  (loss, (logs, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
  return new_state, {'loss': loss, **logs}


def predict_step(variables: dict, batch: dict[str, jax.Array], out_shape: tuple[int, int], *, model: nn.Module,
                 config: ml_collections.ConfigDict) -> jax.Array:
  """int32 (B, *out_shape) predicted classes of an eval batch (labels not needed), at each image's original
  resolution: the image's (h, w) = batch['original_size'] top-left region is its prediction, the rest padding."""
  scores, _ = inference.scores_at_original_size(variables, batch, out_shape, model=model, config=config)
  return jnp.argmax(scores, axis=-1).astype(jnp.int32)


def image_confusions(predictions: jax.Array, labels: jax.Array, *, num_classes: int,
                     ignore_index: int) -> jax.Array:
  """int32 (B, K, K) confusion matrix of each image (rows ground truth, columns prediction) between predictions
  int (B, Lh, Lw) (predict_step's) and labels uint8 (B, Lh, Lw) at the same resolution; ignored and padded label
  pixels are not counted."""
  return jax.vmap(lambda p, l: metrics.confusion_matrix(p, l, num_classes, ignore_index))(predictions, labels)


def eval_step(variables: dict, batch: dict[str, jax.Array], *, model: nn.Module,
              config: ml_collections.ConfigDict, num_classes: int, ignore_index: int,
              per_image: bool = False) -> dict[str, Any]:
  """What one global batch adds to the evaluation.

  The batch is {'image': uint8 (B, H, W, 3), 'label': uint8 (B, Lh, Lw), 'image_size': int (B, 2),
  'original_size': int (B, 2), 'index': int (B,) each image's index in the split}. Predictions are scored at each
  image's original resolution (inference.scores_at_original_size), as mmseg, HRNet and PyTorch-Encoding do.
  Returns {'confusion': the (K, K) int32 confusion matrix}; with config.eval.boundary_px, 'boundary': one (K, K)
  matrix per trimap width (metrics.boundary_confusions); with config.eval.feature_metrics, 'features': the
  batch's feature_metrics.FeatureStats; with `per_image`, 'image_confusion': int32 (B, K, K) each image's matrix
  (image_confusions) and its 'index'.
  """
  scores, features = inference.scores_at_original_size(variables, batch, batch['label'].shape[1:3], model=model,
                                                       config=config, features=config.eval.feature_metrics)
  predictions = jnp.argmax(scores, axis=-1)
  if per_image:
    per_image_confusion = image_confusions(predictions, batch['label'], num_classes=num_classes,
                                           ignore_index=ignore_index)
    result = {'confusion': per_image_confusion.sum(axis=0), 'image_confusion': per_image_confusion,
              'index': batch['index']}
  else:
    result = {'confusion': metrics.confusion_matrix(predictions, batch['label'], num_classes, ignore_index)}
  if config.eval.boundary_px:
    result['boundary'] = metrics.boundary_confusions(predictions, batch['label'], batch['original_size'],
                                                     tuple(config.eval.boundary_px), num_classes, ignore_index)
  if features is not None:
    labels = feature_metrics.labels_at_features(batch['label'], features.image_size, batch['original_size'],
                                                features.input_shape, features.features.shape[1:3], num_classes)
    result['features'] = feature_metrics.batch_statistics(features.features, labels, batch['index'],
                                                          num_classes=num_classes, samples=config.eval.feature_samples,
                                                          seed=config.seed)
  return result


def classification_eval_step(variables: dict, batch: dict[str, jax.Array], *, model: nn.Module,
                             config: ml_collections.ConfigDict, num_classes: int,
                             ignore_index: int) -> dict[str, jax.Array]:
  """What one global batch of a classification dataset {'image': uint8 (B, H, W, 3), 'label': int32 (B,), ...}
  adds to the evaluation: {'confusion': the (K, K) int32 confusion matrix of the images' classes (rows) and the
  argmax of their logits (columns)}; padding images (label ignore_index) are not counted."""
  predictions = jnp.argmax(inference.classify(variables, batch['image'], model=model, config=config), axis=-1)
  return {'confusion': metrics.confusion_matrix(predictions, batch['label'], num_classes, ignore_index)}
