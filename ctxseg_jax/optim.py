"""SGD with momentum, L2 weight decay and a per-iteration polynomial (or cosine) LR, as the reference codebases
train."""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax


SCHEDULES = ('poly', 'cosine')


def lr_schedule(optim_config: ml_collections.ConfigDict, total_steps: int) -> Callable[[jax.Array], jax.Array]:
  """The LR by step, by optim_config.schedule, over T = total_steps, with optional warmup:

    'poly':   lr(t) = (lr - end_lr) * (1 - t / T) ** poly_power + end_lr for t in [0, T];
    'cosine': lr(t) = (lr - end_lr) * (1 + cos(pi t / T)) / 2 + end_lr (PyTorch-Encoding's 'cos' LR_Scheduler,
              stepped per iteration, end_lr 0).

  The LR is evaluated before step t is applied, as PyTorch-Encoding does (step 0 uses the base LR). During the
  first `warmup_steps` steps the LR rises linearly from warmup_ratio * lr(0) (mmseg's LinearLR convention) and
  then joins the curve.
  """
  base, end, power = optim_config.lr, optim_config.end_lr, optim_config.poly_power
  warmup, ratio = optim_config.warmup_steps, optim_config.warmup_ratio
  cosine = optim_config.schedule == 'cosine'

  def schedule(step):
    t = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps)
    decay = 0.5 * (1.0 + jnp.cos(jnp.pi * t / total_steps)) if cosine else (1.0 - t / total_steps) ** power
    lr = (base - end) * decay + end
    if warmup > 0:
      lr = lr * jnp.where(t < warmup, ratio + (1.0 - ratio) * t / warmup, 1.0)
    return lr

  return schedule


def param_path(path: tuple[Any, ...]) -> str:
  """A pytree path as the string lr_mults patterns match: 'decode_head/conv_seg/kernel'."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def lr_multiplier(path: str, lr_mults: Sequence[tuple[str, float]]) -> float:
  """The LR multiplier of the parameter at `path`: that of the first (regex, multiplier) whose regex
  re.search-es the path, else 1."""
  for pattern, mult in lr_mults:
    if re.search(pattern, path):
      return float(mult)
  return 1.0


def make_optimizer(optim_config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """PyTorch SGD semantics: g + wd * w goes into the momentum buffer b = m * b + g; w -= lr * mult * b.

  `mult` comes from optim_config.lr_mults (PyTorch-Encoding trains every parameter outside the backbone at 10x;
  HRNet-OCR those whose names hold cls, aux or ocr). Parameters with the same multiplier form one group.
  """
  schedule = lr_schedule(optim_config, total_steps)
  lr_mults = tuple(optim_config.lr_mults)
  mults = sorted({1.0} | {float(m) for _, m in lr_mults})

  def sgd(mult: float) -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(optim_config.weight_decay),
        optax.sgd(lambda step: mult * schedule(step), momentum=optim_config.momentum or None, nesterov=False),
    )

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: f'lr_x{lr_multiplier(param_path(path), lr_mults)}', params)

  return optax.multi_transform({f'lr_x{mult}': sgd(mult) for mult in mults}, labels)
