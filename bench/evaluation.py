"""Benchmark of multi-scale + flip sliding-window evaluation (PyTorch-Encoding's PASCAL-Context protocol).

  python bench/evaluation.py --out FILE [--images N] [--batch B] [--repeats R]

Protocol (configs/encnet_pcontext.py's evaluation, eval.combine 'pte'): long side ceil(520 x s) for s in 0.5, 0.75,
1.0, 1.25, 1.5, 1.75, 480x480 windows every 320 pixels padded with black, each window and its mirror image, exp
of the summed logits, summed over windows and scales at the original resolution. Model: the CPU demo's FCN
(configs/demo_fcn.py: dilated ResNet-18 V1c at width 16, mmseg FCN head), randomly initialised. Images: N random
uint8 images at PASCAL-Context's common sizes (500 x 375 and similar, both orientations). Two implementations,
in this one process, on the same images and parameters:

  ctxseg_jax   Experiment.predict_step (the eval and predict path): batches of B images as the eval pipeline
               makes them, every window of every image of a scale in batched forward passes of
               eval.windows_per_pass windows, one compiled program for the whole protocol.
  direct_loop  bench/eval_reference.pte_loop: MultiEvalModule's loop, one image, one scale and one window (with
               its mirror) at a time, the model's forward on one window jitted once (all windows are 480x480).

`compile_s` is the compilation time (ctxseg_jax: lowering and compiling predict_step; direct_loop: the first
call of the window forward), excluded from `images_per_s`, which is N over the median of --repeats timed passes
over all images. `agreement` is the fraction of pixels where the two predictions (argmax) agree.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import eval_reference, harness  # noqa: E402

SIZES = ((375, 500), (500, 375), (333, 500), (500, 333), (281, 500), (500, 500), (366, 500), (400, 300))


def build_config():
  """configs/demo_fcn.py's model with PyTorch-Encoding's PASCAL-Context evaluation."""
  from ctxseg_jax import protocols
  from tests.shipped_configs import load
  config = load('configs/demo_fcn.py')
  data = config.data
  data.crop_size, data.base_size, data.image_pad_value = (480, 480), 520, (0, 0, 0)
  data.eval_size, data.eval_label_size = (520, 520), (500, 500)
  protocols.pytorch_encoding_evaluation(config)
  return config


def images(count: int) -> list[np.ndarray]:
  rng = np.random.default_rng(0)
  return [rng.integers(0, 256, size=(*SIZES[i % len(SIZES)], 3), dtype=np.uint8) for i in range(count)]


def run_ctxseg_jax(exp, variables, config, inputs, batch_size, repeats):
  """(predictions cropped to each image, compile_s, pass times)."""
  import jax
  from ctxseg_jax import parallel
  from ctxseg_jax.data import transforms
  preprocess = transforms.EvalPreprocess.from_config(config.data, config.eval)
  samples = [preprocess.map({'image': image, 'index': i}) for i, image in enumerate(inputs)]
  samples += [samples[-1]] * (-len(samples) % batch_size)
  batches = [{key: np.stack([s[key] for s in samples[i:i + batch_size]]) for key in samples[0]}
             for i in range(0, len(samples), batch_size)]
  global_batches = [parallel.to_global(batch, exp.mesh) for batch in batches]
  start = time.perf_counter()
  compiled = exp.predict_step.lower(variables, global_batches[0]).compile()
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    outputs = [compiled(variables, batch) for batch in global_batches]
    jax.block_until_ready(outputs)
    times.append(time.perf_counter() - start)
  predictions = np.concatenate([np.asarray(o) for o in outputs])
  return [predictions[i, :image.shape[0], :image.shape[1]] for i, image in enumerate(inputs)], compile_s, times


def run_direct_loop(exp, variables, config, inputs, repeats):
  """(predictions, compile_s, pass times) of bench.eval_reference.pte_loop with a jitted window forward."""
  import jax
  import jax.numpy as jnp
  from ctxseg_jax import inference
  from ctxseg_jax.models.layers.resize import resize_bilinear

  @jax.jit
  def window(pixels):
    x = inference.normalize(pixels[None], config.data.mean, config.data.std)
    return resize_bilinear(exp.model.apply(variables, x, train=False)['logits'], pixels.shape[:2], True)[0]

  def logits(pixels, align_corners):
    assert align_corners
    return np.asarray(window(jnp.asarray(pixels, jnp.float32)))

  start = time.perf_counter()
  jax.block_until_ready(window(jnp.zeros((*config.eval.crop_size, 3), jnp.float32)))
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    scores = [eval_reference.pte_loop(logits, config, image, exp.info.num_classes) for image in inputs]
    times.append(time.perf_counter() - start)
  return [s.argmax(-1) for s in scores], compile_s, times


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--out', required=True, help='JSON file to write the results to.')
  parser.add_argument('--images', type=int, default=8, help='images evaluated per pass')
  parser.add_argument('--batch', type=int, default=4, help="ctxseg_jax's eval batch")
  parser.add_argument('--repeats', type=int, default=2, help='timed passes over the images per implementation')
  args = parser.parse_args(argv)
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jax
  from ctxseg_jax import experiment

  config = build_config()
  config.eval.batch_size = args.batch
  exp = experiment.build(config, jax.devices()[:1])
  state = exp.init_state()
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  inputs = images(args.images)
  ours, ours_compile, ours_times = run_ctxseg_jax(exp, variables, config, inputs, args.batch, args.repeats)
  direct, direct_compile, direct_times = run_direct_loop(exp, variables, config, inputs, args.repeats)
  agree = sum(int((a == b).sum()) for a, b in zip(ours, direct)) / sum(a.size for a in ours)
  results = [{'impl': impl, 'images_per_s': len(inputs) / statistics.median(times), 'compile_s': compile_s,
              'times_s': times, 'images': len(inputs)}
             for impl, compile_s, times in (('ctxseg_jax', ours_compile, ours_times),
                                            ('direct_loop', direct_compile, direct_times))]
  report = {'results': results, 'agreement': agree, 'device': harness.device(), 'batch': args.batch,
            'protocol': {'combine': config.eval.combine, 'scales': list(config.eval.scales), 'flip': config.eval.flip,
                         'crop_size': list(config.eval.crop_size), 'stride': list(config.eval.stride),
                         'base_size': config.data.base_size, 'windows_per_pass': config.eval.windows_per_pass}}
  speedup = results[0]['images_per_s'] / results[1]['images_per_s']
  print(f'{"impl":<13}{"images/s":>10}{"compile s":>11}')
  for row in results:
    print(f'{row["impl"]:<13}{row["images_per_s"]:>10.3f}{row["compile_s"]:>11.1f}')
  print(f'ctxseg_jax / direct_loop: {speedup:.2f}x; predictions agree on {100 * agree:.4f}% of pixels')
  with open(args.out, 'w') as f:
    json.dump(report, f, indent=2)


if __name__ == '__main__':
  main()
