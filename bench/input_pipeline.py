"""Benchmark of the Cityscapes training input pipeline: images/s of the grain loader by worker count.

  python bench/input_pipeline.py --out FILE [--images N] [--batch B] [--workers 0 1 2]
                                 [--warmup N] [--batches N] [--repeats N] [--data_dir DIR]

The data: a generated tree of N (default 24) 2048x1024 RGB PNG images with 1024x2048 PNG labels of train ids
(0..18, 255 ignore), in the `folder` layout (read by the same FilePairSource as data.name=cityscapes). Images are
made to compress like photographs rather than like noise: each is a scene of class regions (sky, buildings, road,
cars, poles, ...; the label) coloured by class, with smooth illumination gradients and per-region texture, plus
Gaussian sensor noise (sigma 2). The mean PNG size is reported beside the results (Cityscapes' leftImg8bit PNGs
average about 2.2 MB).

The work per sample is configs/encnet_cityscapes.py's training augmentation: decode, rescale the long side to
2048 x U(0.5, 2.0), pad, 512x1024 crop, flip, with mmseg's cat_max_ratio 0.75 and PhotoMetricDistortion (set
here when the config leaves them off; the report says which), computed by
ctxseg_jax.data.pipeline.train_iterator with data.worker_count = 0 (in process), 1, 2 (worker processes).

Each worker count runs in its own subprocess: `--warmup` batches untimed, then `--repeats` timed blocks of
`--batches` batches; the reported rate is all timed images over all timed wall time, with the slowest and fastest
block beside it. The warm-up covers pipeline start-up (worker processes) and the start-up burst of prefetching
threads, and the timed window is long because grain's batches arrive in waves: it computes
data.worker_buffer_size batches at once in threads (in the main process with worker_count 0, in each worker
process otherwise), and on few cores they finish close together, so short blocks see either a wave (a high
rate) or the gap before the next (a low one). Batches are consumed as numpy arrays and nothing else
runs, so this is the loader's throughput alone. The report gives the machine's cores and how many CPU-bound
processes it really runs at once (`parallel_capacity`: a pure-Python loop alone and on every core together),
since vCPUs that share a physical core add little throughput.
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
SIZE = (1024, 2048)  # (height, width), Cityscapes

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


def scene(rng: np.random.Generator, size: tuple[int, int] = SIZE) -> tuple[np.ndarray, np.ndarray]:
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


def write_tree(root: str, count: int, seed: int = 0) -> dict[str, Any]:
  """Writes `count` scenes as a `folder` dataset (images/train, labels/train, dataset.json); returns sizes."""
  from PIL import Image
  from ctxseg_jax.data import export
  from ctxseg_jax.data.datasets import cityscapes
  image_dir, label_dir = os.path.join(root, 'images', 'train'), os.path.join(root, 'labels', 'train')
  os.makedirs(image_dir, exist_ok=True)
  os.makedirs(label_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  image_bytes, label_bytes = [], []
  for i in range(count):
    image, label = scene(rng)
    image_path, label_path = os.path.join(image_dir, f'{i:06d}.png'), os.path.join(label_dir, f'{i:06d}.png')
    Image.fromarray(image).save(image_path)
    Image.fromarray(label).save(label_path)
    image_bytes.append(os.path.getsize(image_path))
    label_bytes.append(os.path.getsize(label_path))
  export.write_dataset_json(cityscapes.CITYSCAPES_INFO, root)
  return {'images': count, 'size_hw': list(SIZE), 'mean_image_png_mb': float(np.mean(image_bytes)) / 1e6,
          'mean_label_png_kb': float(np.mean(label_bytes)) / 1e3}


# --- one run ---------------------------------------------------------------------------------------------------

def bench_config(root: str):
  """configs/encnet_cityscapes.py reading the generated tree; cat_max_ratio and photometric on (mmseg)."""
  config = harness.load_config('configs/encnet_cityscapes.py')
  set_here = {}
  if config.data.cat_max_ratio >= 1:
    config.data.cat_max_ratio = set_here['cat_max_ratio'] = 0.75
  if not config.data.photometric_distortion:
    config.data.photometric_distortion = set_here['photometric_distortion'] = True
  config.data.name, config.data.root = 'folder', root
  return config, set_here


def run_child(workers: int, root: str, batch: int, warmup: int, batches: int, repeats: int) -> dict[str, Any]:
  """Times the grain loader with `workers` worker processes in this process."""
  from absl import flags

  from ctxseg_jax.data import datasets, pipeline
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags; this script parses its own arguments
  config, set_here = bench_config(root)
  config.data.worker_count = workers
  start = time.perf_counter()
  source = datasets.build_source(config.data, 'train')
  iterator = pipeline.train_iterator(source, config.data, batch, seed=0, process_index=0, process_count=1)
  for _ in range(warmup):
    element = next(iterator)
  startup_s = time.perf_counter() - start
  rates, total = [], 0.0
  for _ in range(repeats):
    begin = time.perf_counter()
    for _ in range(batches):
      element = next(iterator)
    elapsed = time.perf_counter() - begin
    rates.append(batches * batch / elapsed)
    total += elapsed
  shape = list(element['image'].shape)
  pipeline.close(iterator)
  return {'loader': LOADER, 'workers': workers, 'images_per_s': repeats * batches * batch / total,
          'min_images_per_s': float(np.min(rates)), 'max_images_per_s': float(np.max(rates)), 'rates': rates,
          'startup_s': startup_s, 'batch_shape': shape, 'set_by_bench': set_here,
          'cat_max_ratio': config.data.cat_max_ratio, 'photometric_distortion': config.data.photometric_distortion,
          'resize_antialias': config.data.resize_antialias}


def _spawn(workers: int, args: argparse.Namespace, root: str) -> dict[str, Any]:
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=_REPO)
  cmd = [sys.executable, os.path.abspath(__file__), '--child', str(workers), '--data_dir', root,
         '--batch', str(args.batch), '--warmup', str(args.warmup), '--batches', str(args.batches),
         '--repeats', str(args.repeats)]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f'{LOADER} with {workers} workers failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(results: list[dict[str, Any]]) -> str:
  lines = [f'{"loader":<8} {"workers":>7} {"images/s":>9} {"block min":>9} {"block max":>9} {"ms/image":>9} '
           f'{"startup s":>10}']
  for r in results:
    lines.append(f'{r["loader"]:<8} {r["workers"]:>7} {r["images_per_s"]:>9.2f} {r["min_images_per_s"]:>9.2f} '
                 f'{r["max_images_per_s"]:>9.2f} {1e3 / r["images_per_s"]:>9.0f} {r["startup_s"]:>10.1f}')
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--out', help='JSON file to write the results to.')
  parser.add_argument('--images', type=int, default=24, help='generated 2048x1024 image/label pairs')
  parser.add_argument('--batch', type=int, default=2, help='images per batch (per step)')
  parser.add_argument('--warmup', type=int, default=40,
                      help='untimed batches first; enough to drain start-up bursts of prefetching threads')
  parser.add_argument('--batches', type=int, default=30, help='batches per timed block')
  parser.add_argument('--repeats', type=int, default=3, help='timed blocks (the rate over all of them is reported)')
  parser.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2], help='data.worker_count values')
  parser.add_argument('--data_dir', help='where the tree is (kept); default: a temporary folder, then deleted')
  parser.add_argument('--child', type=int, metavar='WORKERS', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.child is not None:
    result = run_child(args.child, args.data_dir, args.batch, args.warmup, args.batches, args.repeats)
    print(json.dumps(result))
    return
  if not args.out:
    parser.error('--out is required')
  root = args.data_dir or tempfile.mkdtemp(prefix='ctxseg_input_bench_')
  try:
    start = time.perf_counter()
    if os.path.exists(os.path.join(root, 'dataset.json')):
      data = {'images': len(os.listdir(os.path.join(root, 'images', 'train'))), 'reused': root}
    else:
      data = write_tree(root, args.images)
    print(f'data: {data} ({time.perf_counter() - start:.0f}s)', file=sys.stderr, flush=True)
    capacity = parallel_capacity()
    print(f'parallel capacity: {capacity}', file=sys.stderr, flush=True)
    results = []
    for workers in args.workers:
      results.append(_spawn(workers, args, root))
      print(f'{LOADER} workers={workers}: {results[-1]["images_per_s"]:.2f} images/s', file=sys.stderr, flush=True)
  finally:
    if not args.data_dir:
      shutil.rmtree(root, ignore_errors=True)
  report = {'results': results, 'data': data, 'device': harness.device(), 'cores': harness.num_cores(),
            'parallel_capacity': capacity,
            'cpu_count': os.cpu_count(), 'batch': args.batch, 'warmup_batches': args.warmup,
            'timed_batches': args.batches, 'repeats': args.repeats, 'python': platform.python_version()}
  print(f'{harness.device()} (CPU-bound processes run like {capacity["effective_cores"]:.2f} cores at once); batch '
        f'{args.batch}, 512x1024 crops from 2048x1024 PNGs, cat_max_ratio {results[0]["cat_max_ratio"]}, '
        f'photometric {results[0]["photometric_distortion"]}')
  print(_table(results))
  with open(args.out, 'w') as f:
    json.dump(report, f, indent=2)


if __name__ == '__main__':
  main()
