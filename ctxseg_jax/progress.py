"""The training loop's bookkeeping: step metrics fetched lazily from the device, checked for finiteness, averaged
over a logging window, with throughput and ETA."""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import jax
import numpy as np


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; no checkpoint was written after the last finite step."""


class ProgressWindow:
  """Collects each step's device metrics without waiting for them, and summarises the steps since the last log.

  `add` keeps the device arrays (no host sync, so steps stay queued on the device); `fetch` brings them to the
  host and raises NonFiniteLossError at the first non-finite value, before the caller saves anything after it.
  The window's clock excludes the step that compiled (`restart_clock` after it) and evaluations.

  Args:
    on_non_finite: called before the error is raised; returns the text that says where the last good checkpoint
      is.
  """

  def __init__(self, on_non_finite: Callable[[], str]):
    self._on_non_finite = on_non_finite
    self._pending: list[tuple[int, Any]] = []
    self._fetched: list[dict[str, float]] = []
    self._timed_steps = 0
    self._start = time.time()

  def add(self, step: int, metrics: Any, *, timed: bool = True) -> None:
    """Records the (device) metrics of `step`; `timed` False for a step whose time includes compilation."""
    self._pending.append((step, metrics))
    self._timed_steps += int(timed)

  def restart_clock(self) -> None:
    self._start = time.time()

  def fetch(self) -> None:
    """Moves pending metrics to the host; raises NonFiniteLossError naming the first non-finite step."""
    values_by_step = jax.device_get([m for _, m in self._pending])
    for (step, _), values in zip(self._pending, values_by_step):
      values = {k: float(v) for k, v in values.items()}
      if not all(math.isfinite(v) for v in values.values()):
        where = self._on_non_finite()
        raise NonFiniteLossError(
            f'non-finite loss at step {step} ({", ".join(f"{k}={v}" for k, v in values.items())}). '
            f'Stopped without saving; {where}. Try a lower --config.optim.lr or a warmup '
            '(--config.optim.warmup_steps).')
      self._fetched.append(values)
    self._pending = []

  def summary(self, batch_size: int, steps_left: int) -> tuple[dict[str, float], float, float]:
    """Fetches, then returns (mean of each metric, images per second, seconds left) and opens a new window."""
    self.fetch()
    elapsed = time.time() - self._start
    timed = self._timed_steps
    images_per_s = timed * batch_size / elapsed if timed and elapsed > 0 else 0.0
    eta = steps_left * elapsed / timed if timed else float('nan')
    means = {k: float(np.mean([w[k] for w in self._fetched])) for k in self._fetched[0]}
    self._fetched, self._timed_steps, self._start = [], 0, time.time()
    return means, images_per_s, eta
