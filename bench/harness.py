"""What every layer benchmark shares: timing a step, peak RSS, one subprocess per implementation, the device line.

A layer benchmark's `main` is `layer_main(...)`: the parent spawns one child per implementation (`--worker impl`),
which builds its step, times it with `time_step` and prints one JSON row on its last stdout line. `shapes_main(...)`
does the same at several input shapes, one child per (implementation, shape) (`--worker impl --shape 8,19,128,256`).

A benchmark whose implementations should see the same machine conditions times them in interleaved rounds instead:
the parent starts one long-lived child per implementation (`Worker`), one after the other so that no two build or
compile at once; each child builds its step, runs its warm-up steps and waits (`serve`); `interleave` then asks each
child in turn for one timed step, round after round, and collects the rows.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path: str):
  """get_config() of a config file (relative to the repository root), or get_config(arg) for 'file.py:arg'."""
  path, _, arg = path.partition(':')
  spec = importlib.util.spec_from_file_location('bench_config', os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def rss_mib() -> float:
  """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def num_cores() -> int:
  """CPU cores available to this process: XLA's CPU client and the PyTorch threads here use that many."""
  return len(os.sched_getaffinity(0))


def time_step(step: Callable[[], Any], repeats: int, warmup: int) -> dict[str, Any]:
  """Runs `step` `warmup` times untimed (compilation included), then `repeats` timed times; the timing fields of a
  result row: median_s, min_s, times_s, rss_before_mib (peak RSS before the timed steps) and peak_rss_mib."""
  for _ in range(warmup):
    step()
  rss_before = rss_mib()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return {'median_s': float(np.median(times)), 'min_s': float(np.min(times)), 'times_s': times,
          'rss_before_mib': rss_before, 'peak_rss_mib': rss_mib()}


def spawn(script: str, impl: str, repeats: int, warmup: int, worker_args: Sequence[str] = ()) -> dict[str, Any]:
  """Runs `script --worker impl [worker_args]` in its own process on the CPU and returns the row it prints."""
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'))
  cmd = [sys.executable, os.path.abspath(script), '--worker', impl, '--repeats', str(repeats), '--warmup',
         str(warmup), *worker_args]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f'{impl} worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


PROTOCOL_PREFIX = '@@bench '  # marks the lines a long-lived worker writes for its parent on stdout


def _reply(message: dict[str, Any]) -> None:
  print(PROTOCOL_PREFIX + json.dumps(message), flush=True)


def serve(step: Callable[[], Any], warmup: int, ready: dict[str, Any],
          finish: Callable[[], dict[str, Any]] | None = None) -> None:
  """The child's side of `interleave`: runs `step` `warmup` times untimed, replies `ready` (plus rss_before_mib,
  the peak RSS so far), then times one `step` per 'step' line read from stdin, replying {'time_s'}; on 'finish'
  replies the row: `ready`, what `finish()` returns, and the timing fields of `time_step` (times in round order)."""
  for _ in range(warmup):
    step()
  rss_before = rss_mib()
  _reply({**ready, 'rss_before_mib': rss_before})
  times = []
  for line in sys.stdin:
    command = line.strip()
    if command == 'step':
      start = time.perf_counter()
      step()
      times.append(time.perf_counter() - start)
      _reply({'time_s': times[-1]})
    elif command == 'finish':
      _reply({**ready, **(finish() if finish else {}), 'median_s': float(np.median(times)),
              'min_s': float(np.min(times)), 'times_s': times, 'rss_before_mib': rss_before,
              'peak_rss_mib': rss_mib()})
      return
    else:
      raise ValueError(f'unknown command {command!r}')


class Worker:
  """A long-lived child `script --worker impl --warmup N [worker_args]` on the CPU, driven over its stdin/stdout
  (see `serve`); its stderr goes to a temporary file, quoted when it fails."""

  def __init__(self, script: str, impl: str, warmup: int, worker_args: Sequence[str] = ()):
    self.impl = impl
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'))
    cmd = [sys.executable, os.path.abspath(script), '--worker', impl, '--warmup', str(warmup), *worker_args]
    self._stderr = tempfile.TemporaryFile(mode='w+')
    self._proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                  text=True)
    self.ready = self._receive()

  def _receive(self) -> dict[str, Any]:
    for line in self._proc.stdout:
      if line.startswith(PROTOCOL_PREFIX):
        return json.loads(line[len(PROTOCOL_PREFIX):])
    self._proc.wait()
    self._stderr.seek(0)
    raise RuntimeError(f'{self.impl} worker failed (exit {self._proc.returncode}):\n{self._stderr.read()[-4000:]}')

  def _request(self, command: str) -> dict[str, Any]:
    self._proc.stdin.write(command + '\n')
    self._proc.stdin.flush()
    return self._receive()

  def step(self) -> float:
    """One timed step in the child; its time in seconds."""
    return self._request('step')['time_s']

  def finish(self) -> dict[str, Any]:
    """The child's row; the child exits."""
    row = self._request('finish')
    self._proc.wait()
    self._stderr.close()
    return row

  def close(self) -> None:
    """Ends the child if it still runs (after an error elsewhere)."""
    if self._proc.poll() is None:
      self._proc.kill()
      self._proc.wait()


def interleave(starts: Sequence[Callable[[], Worker]], rounds: int) -> list[dict[str, Any]]:
  """Starts each worker in turn (each waits, warmed up, while the next builds), then runs `rounds` rounds of one
  timed step per worker, in the order given; returns their rows, each with 'times_s' in round order."""
  workers: list[Worker] = []
  try:
    for start in starts:
      workers.append(start())
      print(f'  {workers[-1].impl} ready', file=sys.stderr, flush=True)
    for r in range(rounds):
      times = [worker.step() for worker in workers]
      print(f'  round {r + 1}/{rounds}: ' + ', '.join(f'{t:.3f} s' for t in times), file=sys.stderr, flush=True)
    return [worker.finish() for worker in workers]
  finally:
    for worker in workers:
      worker.close()


def device() -> str:
  """'cpu: <model name>, <n> cores available'."""
  model = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      model = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return f'cpu: {model}, {num_cores()} cores available'


def table(results: list[dict[str, Any]], *, baseline: str, unit: str) -> str:
  """Per row: implementation, shape (when rows have one), median and min time in `unit` ('s' or 'ms'), peak RSS,
  GFLOP/s and exactness (when rows have them), and the speed-up over the `baseline` row of the same shape."""
  scale = {'s': 1.0, 'ms': 1e3}[unit]
  shape_of = lambda r: ','.join(map(str, r['shape'])) if 'shape' in r else ''  # noqa: E731
  base = {shape_of(r): r for r in results if r['impl'] == baseline}
  columns = [('impl', max(len(r['impl']) for r in results) + 2, '<', lambda r: r['impl'])]
  if any('shape' in r for r in results):
    columns.append(('shape', max(len(shape_of(r)) for r in results) + 2, '<', shape_of))
  columns += [('median ' + unit, 10, '>', lambda r: f'{r["median_s"] * scale:.2f}'),
              ('min ' + unit, 9, '>', lambda r: f'{r["min_s"] * scale:.2f}'),
              ('peak RSS MiB', 13, '>', lambda r: f'{r["peak_rss_mib"]:.0f}')]
  if any('gflops' in r for r in results):
    columns.append(('GFLOP/s', 8, '>', lambda r: f'{r["gflops"]:.1f}'))
  if any('exact' in r for r in results):
    columns.append(('exact', 6, '>', lambda r: str(r.get('exact', '-'))))
  columns.append(('vs ' + baseline, len(baseline) + 3, '>', lambda r: (
      f'{base[shape_of(r)]["median_s"] / r["median_s"]:.2f}x' if shape_of(r) in base else '-')))
  lines = [' '.join(f'{title:{align}{width}}' for title, width, align, _ in columns)]
  lines += [' '.join(f'{cell(r):{align}{width}}' for _, width, align, cell in columns) for r in results]
  return '\n'.join(lines)


def _parser(doc: str, impls: tuple[str, ...], repeats: int, warmup: int) -> argparse.ArgumentParser:
  """The options every benchmark takes: --out, --repeats, --warmup, --impls, and --worker (the child's side)."""
  parser = argparse.ArgumentParser(description=doc.split('\n', 1)[0])
  parser.add_argument('--out', help='JSON file to write the results to.')
  parser.add_argument('--repeats', type=int, default=repeats, help='timed steps per implementation (and shape)')
  parser.add_argument('--warmup', type=int, default=warmup, help='untimed steps first (compilation included)')
  parser.add_argument('--impls', nargs='+', choices=impls, default=list(impls))
  parser.add_argument('--worker', choices=impls, help=argparse.SUPPRESS)
  return parser


def _report(out: str, report: dict[str, Any], *, baseline: str, unit: str) -> None:
  """Prints the results' table and writes `report` as JSON to `out`."""
  print(table(report['results'], baseline=baseline, unit=unit))
  with open(out, 'w') as f:
    json.dump(report, f, indent=2)


def layer_main(argv: list[str] | None, *, script: str, doc: str, impls: tuple[str, ...],
               run_worker: Callable[[str, int, int], dict[str, Any]], shape: dict[str, Any], baseline: str,
               unit: str, repeats: int, warmup: int, first: tuple[str, ...] = ()) -> None:
  """The command line of a layer benchmark: `--out FILE [--repeats N] [--warmup N] [--impls ...]` times each
  implementation in its own process (those in `first` before the others, so that the fast forms run back to back)
  and writes {"results": [...], "shape", "device", "repeats", "warmup"}; `--worker IMPL` is the child's side."""
  parser = _parser(doc, impls, repeats, warmup)
  args = parser.parse_args(argv)
  if args.worker:
    print(json.dumps(run_worker(args.worker, args.repeats, args.warmup)))
    return
  if not args.out:
    parser.error('--out is required')
  by_impl = {}
  for impl in sorted(args.impls, key=lambda impl: impl not in first):
    by_impl[impl] = spawn(script, impl, args.repeats, args.warmup)
    print(f'{impl}: {by_impl[impl]["median_s"]:.4f} s', file=sys.stderr, flush=True)
  results = [by_impl[impl] for impl in args.impls]
  _report(args.out, {'results': results, 'shape': shape, 'device': device(), 'repeats': args.repeats,
                     'warmup': args.warmup}, baseline=baseline, unit=unit)


def parse_shape(text: str) -> tuple[int, ...]:
  """'8,19,128,256' -> (8, 19, 128, 256)."""
  try:
    shape = tuple(int(dim) for dim in text.split(','))
  except ValueError:
    raise argparse.ArgumentTypeError(f'a shape is comma-separated integers, e.g. 8,19,128,256; got {text!r}')
  if not shape or min(shape) < 1:
    raise argparse.ArgumentTypeError(f'shape dims must be positive; got {text!r}')
  return shape


def shapes_main(argv: list[str] | None, *, script: str, doc: str, impls: tuple[str, ...],
                run_worker: Callable[[str, tuple[int, ...], int, int], dict[str, Any]],
                shapes: tuple[tuple[int, ...], ...], baseline: str, unit: str, repeats: int, warmup: int) -> None:
  """The command line of a benchmark over several shapes: `--out FILE [--shapes S ...] [--repeats N] [--warmup N]
  [--impls ...]` times each implementation at each shape in its own process and writes {"results": [...],
  "device", "repeats", "warmup"}, one row per (implementation, shape) with its "shape"; `--worker IMPL --shape S`
  is the child's side (run_worker(impl, shape, repeats, warmup) returns the row)."""
  parser = _parser(doc, impls, repeats, warmup)
  parser.add_argument('--shapes', nargs='+', type=parse_shape, default=list(shapes),
                      help='input shapes, each comma-separated (default: %(default)s)')
  parser.add_argument('--shape', type=parse_shape, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    if args.shape is None:
      parser.error('--worker needs --shape')
    print(json.dumps(run_worker(args.worker, args.shape, args.repeats, args.warmup)))
    return
  if not args.out:
    parser.error('--out is required')
  results = []
  for shape in args.shapes:
    for impl in args.impls:
      row = spawn(script, impl, args.repeats, args.warmup, ['--shape', ','.join(map(str, shape))])
      print(f'{impl} {shape}: {row["median_s"]:.4f} s', file=sys.stderr, flush=True)
      results.append(row)
  _report(args.out, {'results': results, 'device': device(), 'repeats': args.repeats, 'warmup': args.warmup},
          baseline=baseline, unit=unit)
