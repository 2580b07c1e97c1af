"""SGD with momentum, L2 weight decay and a per-iteration polynomial LR, as the reference codebases train."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

BACKBONE = 'backbone'


def poly_schedule(optim_config: ml_collections.ConfigDict, total_steps: int) -> Callable[[jax.Array], jax.Array]:
  """lr(t) = (lr - end_lr) * (1 - t / T) ** power + end_lr for t in [0, T], T = total_steps, with optional warmup.

  The LR is evaluated before step t is applied, as PyTorch-Encoding does (step 0 uses the base LR). During the
  first `warmup_steps` steps the LR rises linearly from warmup_ratio * lr(0) (mmseg's LinearLR convention) and
  then joins the polynomial curve.
  """
  base, end, power = optim_config.lr, optim_config.end_lr, optim_config.poly_power
  warmup, ratio = optim_config.warmup_steps, optim_config.warmup_ratio

  def schedule(step):
    t = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps)
    lr = (base - end) * (1.0 - t / total_steps) ** power + end
    if warmup > 0:
      lr = lr * jnp.where(t < warmup, ratio + (1.0 - ratio) * t / warmup, 1.0)
    return lr

  return schedule


def param_group(path: tuple[Any, ...]) -> str:
  """'backbone' for backbone parameters, 'head' for everything else (decode, auxiliary and context heads)."""
  first = path[0]
  name = getattr(first, 'key', getattr(first, 'name', first))
  return BACKBONE if name == BACKBONE else 'head'


def make_optimizer(optim_config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """PyTorch SGD semantics: g + wd * w goes into the momentum buffer b = m * b + g; w -= lr * mult * b.

  Heads get `head_lr_mult` times the backbone LR (PyTorch-Encoding trains heads at 10x).
  """
  schedule = poly_schedule(optim_config, total_steps)

  def sgd(mult: float) -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(optim_config.weight_decay),
        optax.sgd(lambda step: mult * schedule(step), momentum=optim_config.momentum or None, nesterov=False),
    )

  def labels(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: param_group(path), params)

  return optax.multi_transform({BACKBONE: sgd(1.0), 'head': sgd(optim_config.head_lr_mult)}, labels)
