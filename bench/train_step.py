"""Benchmark of the full train step (or, with --inference, the eval-mode forward) of each model family.

  python bench/train_step.py --out FILE [--models NAME ...] [--sizes 256 480] [--repeats N] [--warmup N]
                             [--impls ctxseg_jax torch_eager] [--inference]

One step is the project's own jitted train step, built as the trainer builds it (`experiment.build(config)
.train_step`, its state from `.init_state`: same shardings, donation, loss and optimiser), on a global batch of 2
synthetic uint8 images of HxH and their uint8 labels (see `synthetic_batch`), at each --sizes H. The config is a
shipped one with its crop size set to HxH and train.batch_size to 2; no data pipeline runs. Models:

  fcn_r50                     configs/fcn_pcontext.py with ResNet-50 (PyTorch-Encoding's FCN: resnet50s deep stem,
                              output stride 8, FCNHead, auxiliary FCN head; CE + 0.2 aux CE; SGD momentum 0.9,
                              wd 1e-4, heads at 10x the LR); 59 classes.
  encnet_r50                  configs/encnet_pcontext.py with ResNet-50 (EncHead with lateral connections, the
                              Encoding layer and the SE branch; CE + 0.2 aux CE + 0.2 SE-loss; the same SGD).
  deeplabv3_r101              configs/contextrast.py:deeplabv3_r101,cityscapes,baseline (mmseg DeepLabV3 R-101-D8).
  deeplabv3_r101_contextrast  configs/contextrast.py:deeplabv3_r101,cityscapes (the same with Contextrast's four
                              projection heads and pixel-anchor loss).

Implementations, each in its own process:

  ctxseg_jax   the step above, lowered and compiled once (`.lower(state, batch).compile()`, whose
               cost_analysis() gives XLA's FLOP count) and then called as compiled, the state fed back each step.
  torch_eager  PyTorch on the CPU, eager, running the same architecture with the same losses and SGD update
               (bench/torch_reference.py, built from the same config; the worker asserts that its parameter count
               equals ctxseg_jax's), with as many intra-op threads as cores available, like XLA's CPU client.
               Only for fcn_r50 and encnet_r50; the DeepLabV3 rows are ctxseg_jax's alone.

Implementations of a model (and the DeepLabV3 pair, whose ratio is Contextrast's overhead) run in interleaved
rounds: one long-lived worker each, started in turn (compilation and warm-up happen while the others wait), then
`--repeats` rounds of one timed step per worker, so that slow drifts of the machine hit every implementation alike.
`median_s` is the median of a worker's step times, `ratios["<model>@<H>"]` the median over rounds of
torch_eager's time over ctxseg_jax's, and `overheads["deeplabv3_r101_contextrast@<H>"]` the median over rounds of
the Contextrast step's time over the baseline's (`time`), with the difference of their peak RSS (`peak_rss_mib`)
and the ratio of their FLOP counts (`flops`). Both workers of a group are resident at once.

`flops` is XLA's count for the compiled ctxseg_jax step (a multiply-add counts 2); GFLOP/s is that count over the
median time for both implementations of a model, so the column compares rates of the same work. `compile_s` is the
time to lower and compile the step; `setup_s` that of building the model and its state. Peak RSS is the worker's
ru_maxrss after the timed steps (compilation included for ctxseg_jax); `rss_before_mib` is ru_maxrss before them.
`loss_first` / `loss_last` are the total loss of the first warm-up step and of the last timed step (train mode).

Before the workers start, each implementation's framework times a MATMUL_N^3 float32 matrix product in its own
process (`matmul_gflops`: the best of 10). The last lines printed put each model's step against that rate: the time
its FLOPs would take at the better framework's rate, the share of that rate torch_eager reaches, and so the largest
torch_eager / ctxseg_jax any implementation of these FLOPs could show on this machine.

Contextrast's cost depends on the data: its distance transform takes about as many shifts as the largest distance
inside an error region, and the synthetic labels are 4x4 tiles of a few classes, so error regions are large at
initialisation, as they are at the start of real training.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import harness  # noqa: E402

IMPLS = ('ctxseg_jax', 'torch_eager')
BATCH = 2
SIZES = (256, 480)


@dataclasses.dataclass(frozen=True)
class Model:
  config: str  # a shipped config, 'file.py' or 'file.py:arg' as --config takes it
  depth: int | None = None  # the backbone depth to set, if not the config's
  torch: bool = False  # bench/torch_reference.py has its form
  overhead_over: str | None = None  # the model this one is compared with (same group, interleaved)


MODELS = {
    'fcn_r50': Model('configs/fcn_pcontext.py', depth=50, torch=True),
    'encnet_r50': Model('configs/encnet_pcontext.py', depth=50, torch=True),
    'deeplabv3_r101': Model('configs/contextrast.py:deeplabv3_r101,cityscapes,baseline'),
    'deeplabv3_r101_contextrast': Model('configs/contextrast.py:deeplabv3_r101,cityscapes',
                                        overhead_over='deeplabv3_r101'),
}


def bench_config(name: str, size: int):
  """The model's config with HxH crops and a global batch of BATCH."""
  model = MODELS[name]
  config = harness.load_config(model.config)
  if model.depth is not None:
    config.model.backbone.depth = model.depth
  config.data.crop_size = (size, size)
  config.train.batch_size = BATCH
  return config


def synthetic_batch(size: int, num_classes: int, ignore_index: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images (BATCH, H, W, 3), uniform noise, and uint8 labels (BATCH, H, W): a 4x4 grid of tiles, each of one
  of 5 classes, with the bottom eighth and 2% of scattered pixels at ignore_index."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8)
  classes = rng.choice(num_classes, min(5, num_classes), replace=False)
  tile = -(-size // 4)
  labels = np.repeat(np.repeat(rng.choice(classes, (BATCH, 4, 4)), tile, axis=1), tile, axis=2)[:, :size, :size]
  labels[:, size - size // 8:] = ignore_index
  labels[rng.random(labels.shape) < 0.02] = ignore_index
  return images, labels.astype(np.uint8)


def reference_spec(name: str, size: int) -> dict[str, Any]:
  """What the torch_eager worker builds its model, loss and optimiser from (see torch_reference.Trainer), with
  ctxseg_jax's parameter count (from shapes alone) under 'params'."""
  from ctxseg_jax import experiment, summary
  from ctxseg_jax.data import datasets

  config = bench_config(name, size)
  experiment.validate_config(config)
  info = datasets.dataset_info(config.data)
  return {'model': config.model.to_dict(), 'loss': config.loss.to_dict(), 'optim': config.optim.to_dict(),
          'steps': config.train.steps, 'mean': list(config.data.mean), 'std': list(config.data.std),
          'num_classes': info.num_classes, 'ignore_index': info.ignore_index,
          'params': summary.parameter_counts(config)['params_total']}


def _jax_worker(args: argparse.Namespace) -> None:
  import jax

  from ctxseg_jax import experiment, parallel

  start = time.perf_counter()
  config = bench_config(args.model, args.size)
  exp = experiment.build(config)
  images, labels = synthetic_batch(args.size, exp.info.num_classes, exp.info.ignore_index)
  batch = parallel.to_global({'image': images, 'label': labels}, exp.mesh)
  state = jax.block_until_ready(exp.init_state())
  params = int(sum(x.size for x in jax.tree.leaves(state.params)))
  setup_s = time.perf_counter() - start
  losses = []
  start = time.perf_counter()
  if args.inference:
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    del state
    compiled = exp.predict.lower(variables, batch['image']).compile()

    def step():
      jax.block_until_ready(compiled(variables, batch['image']))
  else:
    compiled = exp.train_step.lower(state, batch).compile()
    holder = {'state': state}
    del state

    def step():
      holder['state'], metrics = jax.block_until_ready(compiled(holder['state'], batch))
      losses.append(metrics['loss'])
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  ready = {'params': params, 'flops': float(cost['flops']), 'compile_s': compile_s, 'setup_s': setup_s,
           'jax': jax.__version__, 'jax_device': str(jax.devices()[0]), 'cores': harness.num_cores()}

  def finish():
    return {'loss_first': float(losses[0]), 'loss_last': float(losses[-1])} if losses else {}

  harness.serve(step, args.warmup, ready, finish)


def _torch_worker(args: argparse.Namespace) -> None:
  import torch

  from bench import torch_reference

  torch.set_num_threads(harness.num_cores())
  spec = json.loads(args.spec)
  start = time.perf_counter()
  trainer = torch_reference.Trainer(spec)
  params = torch_reference.count_params(trainer.model)
  print(f'{args.model} parameters: torch_eager {params:,}, ctxseg_jax {spec["params"]:,}', file=sys.stderr,
        flush=True)
  if params != spec['params']:
    raise AssertionError(f'{args.model}: the PyTorch reference has {params:,} parameters, ctxseg_jax '
                         f'{spec["params"]:,}')
  images, labels = synthetic_batch(args.size, spec['num_classes'], spec['ignore_index'])
  images, labels = torch.from_numpy(images), torch.from_numpy(labels)
  setup_s = time.perf_counter() - start
  losses = []
  if args.inference:
    step = functools.partial(trainer.predict, images)
  else:
    step = lambda: losses.append(trainer.train_step(images, labels)[0])  # noqa: E731
  ready = {'params': params, 'params_ctxseg_jax': spec['params'], 'setup_s': setup_s, 'torch': torch.__version__,
           'torch_threads': torch.get_num_threads()}

  def finish():
    return {'loss_first': float(losses[0]), 'loss_last': float(losses[-1])} if losses else {}

  harness.serve(step, args.warmup, ready, finish)


MATMUL_N = 4096  # the square float32 matrix product that measures a framework's attainable GFLOP/s here


def _matmul_worker(args: argparse.Namespace) -> None:
  """Prints {'matmul_gflops'}: the best rate of a MATMUL_N^3 float32 matrix product in this implementation's
  framework, with as many threads as the step gets: what its convolutions could reach at best on this machine."""
  if args.worker == 'torch_eager':
    import torch
    torch.set_num_threads(harness.num_cores())
    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
    step = lambda: a @ b  # noqa: E731
  else:
    import jax
    a, b = (jax.random.normal(jax.random.key(i), (MATMUL_N, MATMUL_N)) for i in range(2))
    product = jax.jit(lambda a, b: a @ b)
    step = lambda: jax.block_until_ready(product(a, b))  # noqa: E731
  timing = harness.time_step(step, args.repeats, args.warmup)
  print(json.dumps({'matmul_gflops': 2 * MATMUL_N**3 / timing['min_s'] / 1e9}))


def groups(models: list[str], impls: list[str]) -> list[list[tuple[str, str]]]:
  """The (model, impl) workers that run interleaved: each model's implementations, a model with `overhead_over`
  joined to its base's group when both are selected."""
  out: dict[str, list[tuple[str, str]]] = {}
  for model in models:
    workers = [(model, impl) for impl in impls if impl == 'ctxseg_jax' or MODELS[model].torch]
    base = MODELS[model].overhead_over
    if base in out:
      out[base] += workers
    elif workers:
      out[model] = workers
  return list(out.values())


def _start(model: str, impl: str, size: int, args: argparse.Namespace) -> harness.Worker:
  worker_args = ['--model', model, '--size', str(size)] + (['--inference'] if args.inference else [])
  if impl == 'torch_eager':
    worker_args += ['--spec', json.dumps(reference_spec(model, size))]
  print(f'{model} {impl} {BATCH}x{size}x{size}: building', file=sys.stderr, flush=True)
  worker = harness.Worker(__file__, impl, args.warmup, worker_args)
  if impl == 'torch_eager':
    print(f'  parameters: torch_eager {worker.ready["params"]:,}, ctxseg_jax {worker.ready["params_ctxseg_jax"]:,}',
          file=sys.stderr, flush=True)
  return worker


def _round_ratio(numerator: dict[str, Any], denominator: dict[str, Any]) -> float:
  return statistics.median(a / b for a, b in zip(numerator['times_s'], denominator['times_s']))


def table(results: list[dict[str, Any]], ratios: dict[str, float], overheads: dict[str, dict[str, float]]) -> str:
  """One line per row (model, implementation, shape: median and min s, compile s, peak RSS MiB, GFLOP/s), then the
  per-round ratios and the Contextrast overheads."""
  cell = lambda value, fmt: '-' if value is None else format(value, fmt)  # noqa: E731
  columns = [('model', max(len(r['model']) for r in results) + 2, '<', lambda r: r['model']),
             ('impl', 13, '<', lambda r: r['impl']),
             ('shape', 12, '<', lambda r: ','.join(map(str, r['shape']))),
             ('median s', 9, '>', lambda r: f'{r["median_s"]:.3f}'),
             ('min s', 8, '>', lambda r: f'{r["min_s"]:.3f}'),
             ('compile s', 10, '>', lambda r: cell(r.get('compile_s'), '.1f')),
             ('peak RSS MiB', 13, '>', lambda r: f'{r["peak_rss_mib"]:.0f}'),
             ('GFLOP/s', 8, '>', lambda r: cell(r.get('gflops'), '.1f'))]
  lines = [' '.join(f'{title:{align}{width}}' for title, width, align, _ in columns)]
  lines += [' '.join(f'{fn(r):{align}{width}}' for _, width, align, fn in columns) for r in results]
  if ratios:
    lines.append('torch_eager / ctxseg_jax (median over rounds): '
                 + ', '.join(f'{key} {value:.2f}x' for key, value in ratios.items()))
  for key, value in overheads.items():
    lines.append(f'{key} over its baseline: time {value["time"]:.2f}x, peak RSS {value["peak_rss_mib"]:+.0f} MiB, '
                 f'FLOPs {value["flops"]:.2f}x')
  return '\n'.join(lines)


def ceiling(results: list[dict[str, Any]], matmul_gflops: dict[str, float]) -> str:
  """The machine's ceiling: each framework's best matrix-product rate, and for each torch_eager row the most that
  torch_eager / ctxseg_jax could be if every FLOP of the step ran at the better of those rates."""
  peak = max(matmul_gflops.values())
  lines = [f'{MATMUL_N}^3 float32 matmul: ' + ', '.join(f'{impl} {value:.1f}' for impl, value in
                                                           matmul_gflops.items()) + ' GFLOP/s']
  for row in results:
    if row['impl'] == 'torch_eager' and row.get('flops'):
      floor_s = row['flops'] / peak / 1e9
      lines.append(f'{row["model"]}@{row["shape"][1]}: the step\'s FLOPs at {peak:.1f} GFLOP/s take {floor_s:.3f} s; '
                   f'torch_eager runs at {row["gflops"] / peak:.0%} of that, so torch_eager / ctxseg_jax is at most '
                   f'{row["median_s"] / floor_s:.2f}x')
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = harness._parser(__doc__, IMPLS, repeats=5, warmup=2)
  parser.add_argument('--models', nargs='+', choices=list(MODELS), default=list(MODELS))
  parser.add_argument('--sizes', nargs='+', type=int, default=list(SIZES), help='crop sizes H (HxH; default: '
                      '%(default)s)')
  parser.add_argument('--inference', action='store_true', help='time the eval-mode forward instead of the step')
  parser.add_argument('--model', choices=list(MODELS), help=argparse.SUPPRESS)
  parser.add_argument('--size', type=int, help=argparse.SUPPRESS)
  parser.add_argument('--spec', help=argparse.SUPPRESS)
  parser.add_argument('--matmul', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker and args.matmul:
    _matmul_worker(args)
    return
  if args.worker:
    (_torch_worker if args.worker == 'torch_eager' else _jax_worker)(args)
    return
  if not args.out:
    parser.error('--out is required')
  mode = 'inference' if args.inference else 'train'
  results, ratios, overheads = [], {}, {}
  report = {'results': results, 'ratios': ratios, 'overheads': overheads, 'mode': mode, 'batch': BATCH,
            'device': harness.device(), 'repeats': args.repeats, 'warmup': args.warmup,
            'matmul_gflops': {impl: harness.spawn(__file__, impl, 10, 3, ['--matmul'])['matmul_gflops']
                              for impl in args.impls}}
  for size in args.sizes:
    for group in groups(args.models, args.impls):
      starts = [functools.partial(_start, model, impl, size, args) for model, impl in group]
      rows = {key: {'model': key[0], 'impl': key[1], 'shape': [BATCH, size, size], 'mode': mode, **row}
              for key, row in zip(group, harness.interleave(starts, args.repeats))}
      for (model, impl), row in rows.items():
        jax_row = rows.get((model, 'ctxseg_jax'))
        if jax_row is not None:
          row['flops'] = jax_row['flops']
          row['gflops'] = jax_row['flops'] / row['median_s'] / 1e9
        if impl == 'torch_eager' and jax_row is not None:
          ratios[f'{model}@{size}'] = _round_ratio(row, jax_row)
        base = rows.get((MODELS[model].overhead_over, impl))
        if impl == 'ctxseg_jax' and base is not None:
          overheads[f'{model}@{size}'] = {'time': _round_ratio(row, base),
                                          'peak_rss_mib': row['peak_rss_mib'] - base['peak_rss_mib'],
                                          'flops': row['flops'] / base['flops']}
      results.extend(rows.values())
      with open(args.out, 'w') as f:  # after every group, so that an interrupted run keeps what it measured
        json.dump(report, f, indent=2)
  print(table(results, ratios, overheads))
  print(ceiling(results, report['matmul_gflops']))


if __name__ == '__main__':
  main()
