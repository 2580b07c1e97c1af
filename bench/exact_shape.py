"""How close batched evaluation of images of varied sizes comes to running each image alone at its own size.

The references evaluate one image at a time at its own size. Batched evaluation pads images to a shared shape;
this compares, image by image, the predicted classes of each way of batching with those of the image alone:
  exact             each image alone at its own size (batch 1, one program per distinct size): the reference
  canvas            every image padded to data.eval_size, the padding part of the input (eval.image_regions False)
  canvas_regions    the same canvas, each image computed as if alone (eval.image_regions True)
  bucket_<b>        eval.shape_bucket b (data.eval_plan) with image regions: the default with b = 32
Reported per way: argmax agreement with `exact` over all pixels (%), the largest absolute difference of the
scores (logits at the original size), the number of compiled programs (distinct batch shapes), the share of the
batches' pixels that are padding, and the wall time of the pass (compilation included).

The split: `--images` crops of random sizes (64..`--max_size` pixels a side) of synthetic context scenes, each
resized for evaluation to a short side of `--short` pixels (keep-ratio eval_scale (2 short, short), as ADE20K's
(2048, 512)) within eval_size (2 short, 2 short). The model is the config's, with
the weights of the latest checkpoint of --workdir (e.g. a finished run of configs/demo.py) or, without one, its
random initialisation.

  python bench/exact_shape.py --config configs/demo.py --workdir runs/demo --out exact_shape.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402
from ctxseg_jax import evaluate, experiment, inference, parallel  # noqa: E402
from ctxseg_jax.data import eval_plan, pipeline  # noqa: E402
from ctxseg_jax.data.datasets.synthetic_context import SYNTHETIC_CONTEXT_INFO, render_sample  # noqa: E402


class VariedCrops:
  """`count` random crops (h, w in [64, max_size]) of synthetic context scenes rendered at max_size."""

  def __init__(self, count: int, max_size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    self.info, self.split = SYNTHETIC_CONTEXT_INFO, 'varied'
    self.samples = []
    for i in range(count):
      image, label, _ = render_sample((seed, 7, i), max_size)
      h, w = (int(v) for v in rng.integers(64, max_size + 1, size=2))
      top, left = int(rng.integers(0, max_size - h + 1)), int(rng.integers(0, max_size - w + 1))
      self.samples.append({'image': image[top:top + h, left:left + w], 'label': label[top:top + h, left:left + w],
                           'name': f'varied/{i}'})

  def __len__(self) -> int:
    return len(self.samples)

  def __getitem__(self, index: int) -> dict:
    return dict(self.samples[int(index)])

  def sample_name(self, index: int) -> str:
    return self.samples[int(index)]['name']

  def sample_size(self, index: int) -> tuple[int, int]:
    return self.samples[int(index)]['image'].shape[:2]


def predictions(config, variables, source) -> tuple[dict[int, np.ndarray], int, float, float]:
  """({split index: float32 (h, w, K) scores at the original size}, programs compiled, seconds, % of the batches'
  image pixels that are padding) of one pass of the eval pipeline under `config`."""
  exp = experiment.build(config)
  step = jax.jit(lambda v, batch, shape: _scores(exp, v, batch, shape), static_argnums=2)
  plan = eval_plan.plan(source, config.data, config.eval.batch_size, config.eval)
  start = time.perf_counter()
  batches, _ = pipeline.eval_batches(source, config.data, config.eval.batch_size, eval_config=config.eval,
                                     worker_count=0)
  out, shapes, canvas_pixels, image_pixels = {}, set(), 0, 0
  for host_batch in batches:
    canvas_pixels += int(np.prod(host_batch['image'].shape[:3]))
    image_pixels += int((np.prod(host_batch['image_size'], axis=1) * (host_batch['index'] < len(source))).sum())
    batch = parallel.to_global(host_batch, exp.mesh)
    shape = tuple(host_batch['label'].shape[1:3])
    shapes.add((tuple(host_batch['image'].shape[1:3]), shape))
    scores = np.asarray(step(variables, batch, shape))
    for row, index in enumerate(host_batch['index'].tolist()):
      if index < len(source):
        h, w = host_batch['original_size'][row]
        out[index] = scores[row, :h, :w]
  assert not plan.shapes() or plan.shapes() == shapes
  return out, len(shapes), time.perf_counter() - start, 100.0 * (1 - image_pixels / canvas_pixels)


def _scores(exp, variables, batch, shape):
  return inference.scores_at_original_size(variables, batch, shape, model=exp.model, config=exp.config)[0]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='configs/demo.py')
  parser.add_argument('--workdir', default='', help='run whose latest checkpoint gives the weights')
  parser.add_argument('--images', type=int, default=48)
  parser.add_argument('--max_size', type=int, default=160)
  parser.add_argument('--short', type=int, default=96, help='short side of the eval resize')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--buckets', default='16,32,64')
  parser.add_argument('--out', default='')
  args = parser.parse_args()

  base = harness.load_config(args.config)
  base.data.eval_scale = (2 * args.short, args.short)
  base.data.eval_size = (2 * args.short, 2 * args.short)
  base.data.eval_label_size = (args.max_size, args.max_size)
  base.eval.batch_size = args.batch_size
  exp = experiment.build(base)
  if args.workdir:
    step, variables = evaluate.restore_variables(exp, args.workdir)
    weights = f'checkpoint step {step} of {args.workdir}'
  else:
    state = exp.init_state()
    variables, weights = {'params': state.params, 'batch_stats': state.batch_stats}, 'random initialisation'
  source = VariedCrops(args.images, args.max_size)

  ways = {'exact': dict(batch_size=1, shape_bucket=1, image_regions=True),
          'canvas': dict(shape_bucket=0, image_regions=False),
          'canvas_regions': dict(shape_bucket=0, image_regions=True)}
  ways.update({f'bucket_{b}': dict(shape_bucket=int(b), image_regions=True) for b in args.buckets.split(',')})
  results, reference = [], None
  for name, settings in ways.items():
    config = base.copy_and_resolve_references()
    config.unlock()
    config.eval.update(settings)
    scores, programs, seconds, padding = predictions(config, variables, source)
    if reference is None:
      reference = scores
    agree = sum(int((scores[i].argmax(-1) == reference[i].argmax(-1)).sum()) for i in reference)
    total = sum(reference[i].shape[0] * reference[i].shape[1] for i in reference)
    results.append({'way': name, 'argmax_agreement_pct': 100.0 * agree / total,
                    'max_abs_score_diff': float(max(np.abs(scores[i] - reference[i]).max() for i in reference)),
                    'programs': programs, 'padding_pct': padding, 'seconds': seconds})
    row = results[-1]
    print(f'{name:>14}: agreement {row["argmax_agreement_pct"]:8.4f} %  max |dscore| {row["max_abs_score_diff"]:.2e}'
          f'  programs {programs:3d}  padding {padding:5.1f} %  {seconds:6.1f} s', flush=True)
  report = {'config': args.config, 'weights': weights, 'images': args.images, 'max_size': args.max_size,
            'short': args.short,
            'batch_size': args.batch_size, 'distinct_sizes': len({s['image'].shape[:2] for s in source.samples}),
            'device': jax.devices()[0].device_kind,
            'results': results}
  if args.out:
    Path(args.out).write_text(json.dumps(report, indent=2) + '\n')


if __name__ == '__main__':
  main()
