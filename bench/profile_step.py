"""Where the time of one ctxseg_jax train step goes, op by op: XLA's compiled ops, grouped by what they compute.

  python bench/profile_step.py [--model fcn_r50] [--size 256] [--steps 2] [--top 40] [--trace_dir DIR]

Builds the step as bench/train_step.py does (`bench_config`, `experiment.build(config).train_step` on
`.init_state()`), compiles it, runs two warm-up steps, then `--steps` steps under `jax.profiler.trace` (with its
Perfetto trace). Each compiled op's time (per step) is read from that trace and joined to the optimised HLO by op
name, which gives its shape and the JAX operation it came from (`metadata op_name`; 'transpose(jvp(...))' marks the
backward pass). Prints the total per group (`op_group`) and the `--top` ops.

Groups: 'conv/dot fwd' and 'conv/dot bwd' (convolutions and matrix products, XLA:CPU's YNNPACK fusions included;
a weight gradient carries no op_name and counts as bwd), 'transpose' and 'copy' (layout changes, often fused with
the elementwise work that produces their input), 'elementwise fwd' / 'elementwise bwd' and 'reduce' (BatchNorm
statistics, pooling). Timings of a shared machine are noisy; the shares are what to read.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_HLO_OP = re.compile(r'^\s*(?:ROOT )?%(\S+) = (\S+) ([\w-]+)\((.*)$', re.M)


def hlo_ops(hlo_text: str) -> dict[str, dict[str, str]]:
  """{instruction name: {'shape', 'opcode', 'op_name'}} of an optimised HLO module's text (`compiled.as_text()`)."""
  ops = {}
  for name, shape, opcode, rest in _HLO_OP.findall(hlo_text):
    meta = re.search(r'op_name="([^"]*)"', rest)
    ops[name] = {'shape': shape, 'opcode': opcode, 'op_name': meta.group(1) if meta else ''}
  return ops


def op_group(name: str, op: dict[str, str]) -> str:
  """The group of the compiled op `name` (see the module docstring), `op` its hlo_ops entry."""
  kind = re.sub(r'\.\d+$', '', name)
  backward = 'transpose(' in op['op_name']
  if kind.startswith('ynn_fusion') or op['opcode'] in ('convolution', 'dot'):
    return 'conv/dot ' + ('bwd' if backward or not op['op_name'] else 'fwd')
  if 'transpose' in kind:
    return 'transpose'
  if 'copy' in kind:
    return 'copy'
  if 'reduce' in kind:
    return 'reduce'
  return 'elementwise ' + ('bwd' if backward else 'fwd')


def op_times(trace_events: list[dict[str, Any]], ops: dict[str, dict[str, str]], steps: int) -> dict[str, float]:
  """Seconds per step of each compiled op in a Chrome/Perfetto trace's events, over `steps` profiled steps: the
  complete events named like an instruction of `ops` (hlo_ops); the runtime's own events are left out."""
  times: dict[str, float] = collections.defaultdict(float)
  for event in trace_events:
    if event.get('ph') == 'X' and event.get('name') in ops:
      times[event['name']] += event.get('dur', 0) / 1e6 / steps
  return dict(times)


def breakdown(times: dict[str, float], ops: dict[str, dict[str, str]], top: int) -> str:
  """The per-group totals (seconds per step, share) and the `top` slowest ops with shape and op_name."""
  total = sum(times.values())
  groups: dict[str, list[float]] = collections.defaultdict(list)
  for name, seconds in times.items():
    groups[op_group(name, ops[name])].append(seconds)
  lines = [f'{len(times)} compiled ops, {total:.3f} s per step']
  for group, values in sorted(groups.items(), key=lambda item: -sum(item[1])):
    lines.append(f'  {group:16s} {sum(values):8.3f} s {100 * sum(values) / total:5.1f}%  ({len(values)} ops)')
  lines.append(f'{"ms":>8s}  {"op":28s} {"shape":34s} op_name')
  for name, seconds in sorted(times.items(), key=lambda item: -item[1])[:top]:
    op = ops[name]
    origin = op['op_name'].replace('jit(train_step)/', '').replace('Segmentor._forward/', '')
    lines.append(f'{1e3 * seconds:8.1f}  {name:28s} {op["shape"][:34]:34s} {origin[-80:]}')
  return '\n'.join(lines)


def profile(model: str, size: int, steps: int, trace_dir: str) -> tuple[dict[str, float], dict[str, dict[str, str]]]:
  """(op_times, hlo_ops) of `steps` profiled train steps of `model` at size x size."""
  import jax

  from bench import train_step
  from ctxseg_jax import experiment, parallel

  exp = experiment.build(train_step.bench_config(model, size))
  images, labels = train_step.synthetic_batch(size, exp.info.num_classes, exp.info.ignore_index)
  batch = parallel.to_global({'image': images, 'label': labels}, exp.mesh)
  state = exp.init_state()
  compiled = exp.train_step.lower(state, batch).compile()
  for _ in range(2):
    state, _ = jax.block_until_ready(compiled(state, batch))
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(steps):
      state, _ = jax.block_until_ready(compiled(state, batch))
  ops = hlo_ops(compiled.as_text())
  return op_times(read_trace(trace_dir), ops, steps), ops


def read_trace(trace_dir: str) -> list[dict[str, Any]]:
  """The events of the latest Perfetto trace `jax.profiler.trace(trace_dir, create_perfetto_trace=True)` wrote."""
  traces = sorted(glob.glob(os.path.join(trace_dir, '**', 'perfetto_trace.json.gz'), recursive=True))
  if not traces:
    raise FileNotFoundError(f'no perfetto_trace.json.gz under {trace_dir}: profile with create_perfetto_trace=True')
  with gzip.open(traces[-1]) as f:
    events = json.load(f)
  return events['traceEvents'] if isinstance(events, dict) else events


def main(argv: list[str] | None = None) -> None:
  from bench import train_step

  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', choices=list(train_step.MODELS), default='fcn_r50')
  parser.add_argument('--size', type=int, default=256, help='crop size H (HxH; default: %(default)s)')
  parser.add_argument('--steps', type=int, default=2, help='profiled steps (default: %(default)s)')
  parser.add_argument('--top', type=int, default=40, help='slowest ops listed (default: %(default)s)')
  parser.add_argument('--trace_dir', help='where the profiler writes (default: a temporary folder)')
  args = parser.parse_args(argv)
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix='profile_step_')
  times, ops = profile(args.model, args.size, args.steps, trace_dir)
  print(f'{args.model} train step, batch {train_step.BATCH} at {args.size}x{args.size}; trace in {trace_dir}')
  print(breakdown(times, ops, args.top))


if __name__ == '__main__':
  main()
