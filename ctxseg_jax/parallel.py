"""Device mesh, shardings, and host-local batches turned into global arrays.

One data-parallel mesh axis spans every device of every process. Parameters and optimizer state are replicated;
batches are sharded on their leading axis. Inside one jit-compiled step, reductions over the batch (the loss,
BatchNorm statistics) are therefore over the global batch: exact SyncBN with no extra code.
"""
from __future__ import annotations

import itertools
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ctxseg_jax.config import ConfigError

DATA_AXIS = 'data'


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named 'data' over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def per_process_batch_size(global_batch_size: int, mesh: Mesh, key: str) -> int:
  """The number of examples each process loads; raises ConfigError naming `key` when it does not divide."""
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    raise ConfigError(f'config.{key}={global_batch_size} must be a multiple of the number of devices '
                     f'({num_devices}: {jax.process_count()} process(es) x {jax.local_device_count()} local); '
                     f'try --config.{key}={max(num_devices, global_batch_size // num_devices * num_devices)}')
  return global_batch_size // jax.process_count()


def to_global(host_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into arrays sharded over the whole mesh."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in host_batch.items()}


# How long processes wait for each other to compile a program before giving up (a full-size model on a busy host).
COMPILE_BARRIER_TIMEOUT_S = 3600


class InStep:
  """A jitted function whose every program starts on all processes together.

  On the CPU backend, processes exchange data through gloo, which gives up when the processes reach a program's
  first collective more than 30 s apart, as they do when one compiles slower than another. So with several
  processes, each new input signature (tree, shapes, dtypes, shardings) is compiled ahead (`lower().compile()`),
  then every process waits at a barrier of the coordination service before the program first runs. Programs are
  compiled in the same order everywhere (every process runs the same steps), so the barriers pair up. One process:
  the jitted function itself. Everything else (`lower`, `trace`, ...) is the jitted function's.
  """

  def __init__(self, jitted: Callable[..., Any]):
    self._jitted = jitted
    self._compiled = {}

  def __getattr__(self, name: str) -> Any:
    return getattr(self._jitted, name)

  def __call__(self, *args):
    if jax.process_count() == 1:
      return self._jitted(*args)
    leaves, tree = jax.tree.flatten(args)
    key = (tree, tuple((np.shape(x), np.result_type(x), getattr(x, 'sharding', None)) for x in leaves))
    if key not in self._compiled:
      self._compiled[key] = self._jitted.lower(*args).compile()
      _wait_for_every_process('compiled')
    return self._compiled[key](*args)


_barriers = itertools.count()


def _wait_for_every_process(name: str) -> None:
  from orbax.checkpoint import multihost  # pylint: disable=import-outside-toplevel
  multihost.get_barrier_sync_fn()(key=f'ctxseg_jax_{name}_{next(_barriers)}',
                                  timeout_ms=COMPILE_BARRIER_TIMEOUT_S * 1000)


# Words of the runtime errors a process gets when another process of its job is gone: a collective that lost its
# peer (gloo on CPU), or the coordination service that stopped hearing from it.
_LOST_PEER_MARKERS = ('Gloo', 'heartbeat', 'Connection reset by peer', 'coordination service',
                      'CoordinationService')


def lost_peer(error: BaseException) -> str | None:
  """For a JAX runtime error of a multi-process job that says another process is gone: a one-line description,
  its first line included; None otherwise (one process, or another kind of error)."""
  if jax.process_count() == 1 or not isinstance(error, jax.errors.JaxRuntimeError):
    return None
  message = str(error)
  if not any(marker in message for marker in _LOST_PEER_MARKERS):
    return None
  first_line = message.strip().splitlines()[0] if message.strip() else type(error).__name__
  return f'another process of this {jax.process_count()}-process job stopped ({first_line})'


def maybe_initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> None:
  """Calls jax.distributed.initialize() when this run spans several processes.

  Explicit arguments win; otherwise multi-process launches are recognised from the environment of a Cloud TPU
  VM slice (several TPU_WORKER_HOSTNAMES), SLURM (SLURM_NTASKS > 1), Open MPI, or JAX's own variables.
  """
  if coordinator_address or (num_processes or 1) > 1:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif _launched_multiprocess():
    jax.distributed.initialize()
  else:
    return
  logging.info('Distributed: process %d of %d, %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def _launched_multiprocess() -> bool:
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return True
  if ',' in env.get('TPU_WORKER_HOSTNAMES', ''):
    return True
  for key in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    if int(env.get(key, '1') or 1) > 1:
      return True
  return False
