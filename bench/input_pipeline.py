"""Benchmark of the training input pipeline: images/s of the grain loader by config and worker count, per worker
process and per CPU core.

  python bench/input_pipeline.py --out FILE [--config CONFIG ...] [--images N] [--batch B] [--workers 0 1 2]
                                 [--warmup N] [--batches N] [--repeats N] [--data_dir DIR]

The work per sample is each config's own training augmentation (default: configs/encnet_cityscapes.py): decode,
random rescale, pad, crop (with mmseg's cat_max_ratio where the config sets it), flip, PhotoMetricDistortion
where the config sets it, computed by ctxseg_jax.data.pipeline.train_iterator with data.worker_count = 0 (in
process), 1, 2 (worker processes). Only the data changes: the config reads a generated `folder` tree
(data.name='folder') of images shaped and encoded like its dataset's (SHAPES below): N (default 24) scenes of class
regions (sky, buildings, road, cars, poles, ...; the label, train ids 0..18 with 255 borders) coloured by class,
with smooth illumination gradients, per-region texture and Gaussian sensor noise (sigma 2), so that they compress
like photographs rather than like noise. The mean encoded size is reported beside the results (Cityscapes'
leftImg8bit PNGs average about 2.2 MB).

Each (config, worker count) runs in its own subprocess: `--warmup` batches untimed, then `--repeats` timed blocks
of `--batches` batches; the reported rate is all timed images over all timed wall time, with the slowest and fastest
block beside it. The warm-up covers pipeline start-up (worker processes) and the start-up burst of prefetching
threads, and the timed window is long because grain's batches arrive in waves: it computes
data.worker_buffer_size batches at once in threads (in the main process with worker_count 0, in each worker
process otherwise), and on few cores they finish close together, so short blocks see either a wave (a high
rate) or the gap before the next (a low one). Batches are consumed as numpy arrays and nothing else
runs, so this is the loader's throughput alone.

Per process and per core: `images_per_s_per_process` divides the rate by the processes that augment (the worker
processes, or the main one with 0 workers); `cpu_s` is the CPU time (user + system) the main process and its
worker processes used in the timed window, `cores_busy` that over the window's wall time, and
`images_per_cpu_s` the images per second of one fully busy core: the figure that sizes a host, since it does not
depend on how many cores this machine lends the benchmark. The report also gives the machine's cores and how many
CPU-bound processes it really runs at once (`parallel_capacity`: a pure-Python loop alone and on every core
together), since vCPUs that share a physical core add little throughput.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import harness  # noqa: E402

_REPO = harness.REPO
LOADER = 'grain'  # the `loader` of every result
DEFAULT_CONFIG = 'configs/encnet_cityscapes.py'
# The generated images per dataset (config.data.name): (height, width) and encoding of a typical training image.
SHAPES = {
    'cityscapes': ((1024, 2048), 'png'),  # every leftImg8bit image
    'cityscapes_tfds': ((1024, 2048), 'png'),
    # SceneParse150 rescaled its large images to a shorter side of 512 (Zhou et al., "Semantic Understanding of
    # Scenes through the ADE20K Dataset", IJCV 2019); 4:3 landscape
    'ade20k': ((512, 683), 'jpg'),
    'pascal_context_59': ((375, 500), 'jpg'),  # VOC2010 JPEGs: at most 500 on a side (eval_label_size (500, 500))
    'pascal_context_60': ((375, 500), 'jpg'),
    'coco_stuff10k': ((480, 640), 'jpg'),  # COCO JPEGs: at most 640 on a side (eval_label_size (640, 640))
    'coco_stuff164k': ((480, 640), 'jpg'),
    'camvid': ((360, 480), 'png'),
}
JPEG_QUALITY = 90

# Colour and rough layout of the scene's classes (Cityscapes train ids).
_ROAD, _SIDEWALK, _BUILDING, _POLE, _VEGETATION, _SKY, _PERSON, _CAR = 0, 1, 2, 5, 8, 10, 11, 13


def _burn(n: int) -> int:
  total = 0
  for i in range(n):
    total += i
  return total


def parallel_capacity(n: int = 10_000_000) -> dict[str, float]:
  """How many CPU-bound processes the machine really runs at once: one pure-Python loop alone, then one per
  available core at the same time; effective_cores = cores * alone / together (vCPUs that share physical cores,
  or a hypervisor's limits, show up here and not in the core count)."""
  import multiprocessing
  start = time.perf_counter()
  _burn(n)
  alone = time.perf_counter() - start
  with multiprocessing.get_context('spawn').Pool(harness.num_cores()) as pool:
    pool.map(_burn, [1000] * harness.num_cores())  # start-up
    start = time.perf_counter()
    pool.map(_burn, [n] * harness.num_cores())
    together = time.perf_counter() - start
  return {'alone_s': alone, 'together_s': together, 'effective_cores': harness.num_cores() * alone / together}


# --- data ------------------------------------------------------------------------------------------------------

def _smooth(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
  """float32 (H, W) smooth random field in about [-1, 1]: a coarse grid upsampled bilinearly."""
  from PIL import Image
  coarse = rng.uniform(-1, 1, cells).astype(np.float32)
  return np.asarray(Image.fromarray(coarse, mode='F').resize((shape[1], shape[0]), Image.BILINEAR))


def scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """A street-like scene: (uint8 (H, W, 3) RGB image, uint8 (H, W) train ids with some 255)."""
  from PIL import Image, ImageDraw
  from ctxseg_jax.data.datasets import cityscapes
  h, w = size
  label = Image.new('L', (w, h), _SKY)
  draw = ImageDraw.Draw(label)
  horizon = int(h * rng.uniform(0.4, 0.55))
  x = 0
  while x < w:  # a skyline of buildings and trees
    width = int(rng.uniform(0.05, 0.2) * w)
    top = int(rng.uniform(0.05, 0.4) * h)
    draw.rectangle([x, top, x + width, horizon], fill=int(rng.choice([_BUILDING, _BUILDING, _VEGETATION])))
    x += width
  draw.rectangle([0, horizon, w, h], fill=_ROAD)
  draw.polygon([(0, horizon), (int(0.3 * w), horizon), (0, int(0.8 * h))], fill=_SIDEWALK)
  draw.polygon([(w, horizon), (int(0.7 * w), horizon), (w, int(0.8 * h))], fill=_SIDEWALK)
  for _ in range(int(rng.integers(3, 8))):  # cars, people, poles
    cx, cy = int(rng.uniform(0, w)), int(rng.uniform(horizon, h))
    s = int((cy - horizon + 40) * rng.uniform(0.3, 0.6))
    kind = int(rng.choice([_CAR, _PERSON, _POLE]))
    box = {_CAR: [cx - 2 * s, cy - s, cx + 2 * s, cy], _PERSON: [cx - s // 4, cy - 2 * s, cx + s // 4, cy],
           _POLE: [cx - 6, cy - 4 * s, cx + 6, cy]}[kind]
    draw.rounded_rectangle(box, radius=max(2, s // 6), fill=kind, outline=255, width=2)
  label = np.asarray(label)
  palette = np.array(cityscapes.PALETTE + ((0, 0, 0),) * (256 - len(cityscapes.PALETTE)), np.float32)
  palette[255] = (40, 40, 40)
  shading = 1.0 + 0.25 * _smooth(rng, size, (4, 8)) + 0.1 * _smooth(rng, size, (32, 64))
  texture = 12.0 * _smooth(rng, size, (128, 256))
  image = palette[label] * shading[..., None] + texture[..., None] + rng.normal(0, 2, (h, w, 3)).astype(np.float32)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def write_tree(root: str, count: int, size: tuple[int, int], encoding: str, seed: int = 0) -> dict[str, Any]:
  """Writes `count` scenes of `size` (height, width) as a `folder` dataset (images/train as `encoding`, 'png' or
  'jpg'; labels/train; dataset.json); returns the mean file sizes."""
  from PIL import Image
  from ctxseg_jax.data import export
  from ctxseg_jax.data.datasets import cityscapes
  image_dir, label_dir = os.path.join(root, 'images', 'train'), os.path.join(root, 'labels', 'train')
  os.makedirs(image_dir, exist_ok=True)
  os.makedirs(label_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  image_bytes, label_bytes = [], []
  for i in range(count):
    image, label = scene(rng, size)
    image_path, label_path = os.path.join(image_dir, f'{i:06d}.{encoding}'), os.path.join(label_dir, f'{i:06d}.png')
    Image.fromarray(image).save(image_path, **({'quality': JPEG_QUALITY} if encoding == 'jpg' else {}))
    Image.fromarray(label).save(label_path)
    image_bytes.append(os.path.getsize(image_path))
    label_bytes.append(os.path.getsize(label_path))
  export.write_dataset_json(cityscapes.CITYSCAPES_INFO, root)
  return {'images': count, 'size_hw': list(size), 'encoding': encoding,
          'mean_image_mb': float(np.mean(image_bytes)) / 1e6, 'mean_label_png_kb': float(np.mean(label_bytes)) / 1e3}


def data_shape(config_path: str) -> tuple[tuple[int, int], str]:
  """(height, width) and encoding of the images generated for the config's dataset."""
  name = harness.load_config(config_path).data.name
  if name not in SHAPES:
    raise SystemExit(f'{config_path}: data.name={name!r} has no image shape here; known: {sorted(SHAPES)} '
                     f'(add it to SHAPES in {os.path.basename(__file__)})')
  return SHAPES[name]


def tree_for(base: str, config_path: str, count: int) -> tuple[str, dict[str, Any]]:
  """The generated tree under `base` for the config's dataset shape, written unless it exists; (root, its sizes)."""
  size, encoding = data_shape(config_path)
  root = os.path.join(base, f'{size[0]}x{size[1]}_{encoding}')
  info_path = os.path.join(root, 'sizes.json')
  if not os.path.exists(info_path):
    start = time.perf_counter()
    info = write_tree(root, count, size, encoding)
    with open(info_path, 'w') as f:
      json.dump(info, f)
    print(f'data {root}: {info} ({time.perf_counter() - start:.0f}s)', file=sys.stderr, flush=True)
  with open(info_path) as f:
    return root, json.load(f)


# --- one run ---------------------------------------------------------------------------------------------------

def _process_cpu_s(pid: int) -> float:
  """User + system CPU seconds of a live process (Linux /proc)."""
  with open(f'/proc/{pid}/stat') as f:
    fields = f.read().rsplit(')', 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def _cpu_s() -> float:
  """CPU seconds used so far by this process and its live child processes (grain's workers)."""
  import multiprocessing
  own = os.times()
  return own.user + own.system + sum(_process_cpu_s(p.pid) for p in multiprocessing.active_children())


def run_child(config_path: str, workers: int, root: str, batch: int, warmup: int, batches: int,
              repeats: int) -> dict[str, Any]:
  """Times the grain loader of the config (reading the tree at `root`) with `workers` worker processes."""
  from absl import flags

  from ctxseg_jax.data import datasets, pipeline
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags; this script parses its own arguments
  config = harness.load_config(config_path)
  config.data.name, config.data.root, config.data.worker_count = 'folder', root, workers
  start = time.perf_counter()
  source = datasets.build_source(config.data, 'train')
  iterator = pipeline.train_iterator(source, config.data, batch, seed=0, process_index=0, process_count=1)
  for _ in range(warmup):
    element = next(iterator)
  startup_s = time.perf_counter() - start
  rates, total = [], 0.0
  cpu_start = _cpu_s()
  for _ in range(repeats):
    begin = time.perf_counter()
    for _ in range(batches):
      element = next(iterator)
    elapsed = time.perf_counter() - begin
    rates.append(batches * batch / elapsed)
    total += elapsed
  cpu_s = _cpu_s() - cpu_start
  shape = list(element['image'].shape)
  pipeline.close(iterator)
  images = repeats * batches * batch
  data = config.data
  return {'config': config_path, 'loader': LOADER, 'workers': workers, 'images_per_s': images / total,
          'images_per_s_per_process': images / total / max(workers, 1), 'cpu_s': cpu_s,
          'cores_busy': cpu_s / total, 'images_per_cpu_s': images / cpu_s,
          'min_images_per_s': float(np.min(rates)), 'max_images_per_s': float(np.max(rates)), 'rates': rates,
          'startup_s': startup_s, 'batch_shape': shape, 'train_batch_size': config.train.batch_size,
          'augmentation': {'base_size': data.base_size, 'base_short_side': data.base_short_side,
                           'ratio_range': list(data.ratio_range), 'ratio_step': data.ratio_step,
                           'crop_size': list(data.crop_size), 'cat_max_ratio': data.cat_max_ratio,
                           'photometric_distortion': data.photometric_distortion,
                           'resize_antialias': data.resize_antialias}}


def _spawn(config_path: str, workers: int, args: argparse.Namespace, root: str) -> dict[str, Any]:
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=_REPO)
  cmd = [sys.executable, os.path.abspath(__file__), '--child', str(workers), '--config', config_path,
         '--data_dir', root, '--batch', str(args.batch), '--warmup', str(args.warmup), '--batches',
         str(args.batches), '--repeats', str(args.repeats)]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f'{config_path}, {LOADER} with {workers} workers failed (exit {proc.returncode}):\n'
                       f'{proc.stderr[-4000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(results: list[dict[str, Any]]) -> str:
  width = max(len(os.path.basename(r['config'])) for r in results)
  lines = [f'{"config":<{width}} {"workers":>7} {"images/s":>9} {"block min":>9} {"block max":>9} '
           f'{"per proc":>9} {"cores":>6} {"per core":>9} {"startup s":>10}']
  for r in results:
    lines.append(f'{os.path.basename(r["config"]):<{width}} {r["workers"]:>7} {r["images_per_s"]:>9.2f} '
                 f'{r["min_images_per_s"]:>9.2f} {r["max_images_per_s"]:>9.2f} '
                 f'{r["images_per_s_per_process"]:>9.2f} {r["cores_busy"]:>6.2f} {r["images_per_cpu_s"]:>9.2f} '
                 f'{r["startup_s"]:>10.1f}')
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--out', help='JSON file to write the results to.')
  parser.add_argument('--config', nargs='+', default=[DEFAULT_CONFIG],
                      help='config files whose training augmentation is measured, one after the other')
  parser.add_argument('--images', type=int, default=24, help='generated image/label pairs per dataset shape')
  parser.add_argument('--batch', type=int, default=2, help='images per batch (per step)')
  parser.add_argument('--warmup', type=int, default=40,
                      help='untimed batches first; enough to drain start-up bursts of prefetching threads')
  parser.add_argument('--batches', type=int, default=30, help='batches per timed block')
  parser.add_argument('--repeats', type=int, default=3, help='timed blocks (the rate over all of them is reported)')
  parser.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2], help='data.worker_count values')
  parser.add_argument('--data_dir', help='where the generated trees are (kept, and reused by later runs); '
                      'default: a temporary folder, then deleted')
  parser.add_argument('--child', type=int, metavar='WORKERS', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.child is not None:
    result = run_child(args.config[0], args.child, args.data_dir, args.batch, args.warmup, args.batches,
                       args.repeats)
    print(json.dumps(result))
    return
  if not args.out:
    parser.error('--out is required')
  for config_path in args.config:
    data_shape(config_path)  # every config known before any work
  base = args.data_dir or tempfile.mkdtemp(prefix='ctxseg_input_bench_')
  load_before = os.getloadavg()  # other work on the machine: the wall-clock rates depend on it, per core less
  try:
    data, results = {}, []
    capacity = parallel_capacity()
    print(f'parallel capacity: {capacity}', file=sys.stderr, flush=True)
    for config_path in args.config:
      root, data[config_path] = tree_for(base, config_path, args.images)
      for workers in args.workers:
        results.append(_spawn(config_path, workers, args, root))
        print(f'{config_path} {LOADER} workers={workers}: {results[-1]["images_per_s"]:.2f} images/s, '
              f'{results[-1]["images_per_cpu_s"]:.2f} per core', file=sys.stderr, flush=True)
  finally:
    if not args.data_dir:
      shutil.rmtree(base, ignore_errors=True)
  report = {'results': results, 'data': data, 'device': harness.device(), 'cores': harness.num_cores(),
            'parallel_capacity': capacity, 'load_average_1min': [load_before[0], os.getloadavg()[0]],
            'cpu_count': os.cpu_count(), 'batch': args.batch,
            'warmup_batches': args.warmup, 'timed_batches': args.batches, 'repeats': args.repeats,
            'python': platform.python_version()}
  print(f'{harness.device()} (CPU-bound processes run like {capacity["effective_cores"]:.2f} cores at once; '
        f'1-min load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after); batch {args.batch}')
  print(_table(results))
  with open(args.out, 'w') as f:
    json.dump(report, f, indent=2)


if __name__ == '__main__':
  main()
