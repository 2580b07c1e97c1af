"""Fully connected layer with PyTorch `nn.Linear` default initialisation."""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Initializer = Callable[..., jax.Array]


def uniform(low: float, high: float) -> Initializer:
  """U(low, high) for any shape, like PyTorch's `tensor.uniform_(low, high)`."""

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, low, high)

  return init


def torch_linear(features: int, in_features: int, *, dtype: Dtype = jnp.float32,
                 name: str | None = None) -> nn.Dense:
  """An `nn.Dense` initialised like PyTorch `nn.Linear(in_features, features)`.

  PyTorch draws the weight with kaiming_uniform(a=sqrt(5)) and the bias from U(+/-1/sqrt(fan_in)); both reduce to
  U(-1/sqrt(in_features), 1/sqrt(in_features)). mmseg and PyTorch-Encoding keep this default for EncNet's
  linear layers. The kernel is (in_features, features); parameters are float32, `dtype` is the compute dtype.
  Call it inside a parent's `@nn.compact` method on (..., in_features) inputs.
  """
  bound = 1.0 / math.sqrt(in_features)
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=uniform(-bound, bound),
                  bias_init=uniform(-bound, bound), name=name)
