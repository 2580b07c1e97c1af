"""Rematerialisation (config.model.remat): a block keeps only its inputs for the backward pass and recomputes its
activations from them there, one more forward pass of the block for the memory of its activations."""
from __future__ import annotations

import functools

import flax.linen as nn


def block_type(module_type: type[nn.Module], remat: bool) -> type[nn.Module]:
  """`module_type`, or with `remat` its rematerialised form (nn.remat, i.e. jax.checkpoint around the block).

  Either is called as block(x, train, ...), with `train` positional: it is a static argument of jax.checkpoint,
  whose keyword arguments are traced. Parameters and batch statistics are those of `module_type`, same names
  and shapes, so checkpoints are interchangeable and a run may switch it on or off when it resumes.
  """
  return _rematerialised(module_type) if remat else module_type


@functools.cache
def _rematerialised(module_type: type[nn.Module]) -> type[nn.Module]:
  return nn.remat(module_type, static_argnums=(2,))  # argument 0 is the module, 1 the input, 2 `train`


def compiler_options(remat: bool, platform: str) -> dict[str, str] | None:
  """XLA options for compiling a train step of a model with `remat` on `platform` ('cpu', 'gpu', 'tpu').

  XLA's CPU pipeline expands the optimization barriers that jax.checkpoint puts before each recomputation ahead of
  common-subexpression elimination (its 'cse_barrier_expander' pass), which then merges the recomputation back into
  the forward pass: the step keeps every activation after all. GPU and TPU compilers keep the barriers. With that pass
  off the CPU backend rematerialises too, and its memory analysis (--mode summary) shows the saving.
  """
  return {'xla_disable_hlo_passes': 'cse_barrier_expander'} if remat and platform == 'cpu' else None
