"""`--mode summary`: parameter counts, FLOPs, and the memory per device of the compiled train and eval steps, on this
machine's devices or a simulated slice (--simulate_devices: the pod-scale compile check)."""
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ctxseg_jax import experiment, parallel, summary
from ctxseg_jax.data import datasets, pipeline
from tests.shipped_configs import ROOT, load
from tests.tiny_config import get_config


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
  env = {**os.environ, 'PYTHONPATH': ROOT, 'XLA_FLAGS': '',
         'JAX_COMPILATION_CACHE_DIR': jax.config.jax_compilation_cache_dir or ''}
  return subprocess.run([sys.executable, '-m', 'ctxseg_jax.main', *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _shapes(batch: dict) -> dict:
  return {key: (tuple(value.shape), np.dtype(value.dtype)) for key, value in batch.items()}


def test_batch_specs_are_the_input_pipelines_batches():
  config = get_config()
  mesh = parallel.make_mesh(jax.devices()[:1])
  train_spec, eval_spec = summary.batch_specs(config, mesh)
  source = datasets.build_source(config.data, config.data.train_split)
  train_batch = next(iter(pipeline.train_iterator(source, config.data, config.train.batch_size, config.seed)))
  eval_source = datasets.build_source(config.data, config.data.eval_split)
  batches, _ = pipeline.eval_batches(eval_source, config.data, config.eval.batch_size, eval_config=config.eval)
  eval_batch = next(batches)
  assert _shapes(train_spec) == _shapes(train_batch)
  assert _shapes(eval_spec) == _shapes(eval_batch)


def test_batch_sizes_must_divide_over_the_devices():
  config = get_config()
  config.eval.batch_size = 12
  with pytest.raises(ValueError, match=r'eval\.batch_size=12 must be a multiple of the number of devices \(8'):
    summary.batch_specs(config, parallel.make_mesh())


@pytest.mark.slow
def test_demo_compiles_for_64_simulated_devices(tmp_path):
  """The pod-scale compile check: the demo's train step (global batch 64, one image per device), with and without
  model.remat, and its eval step compile for a 64-device mesh; summary.json holds their memory per device."""
  result = _cli('--config', 'configs/demo.py', '--workdir', str(tmp_path), '--mode', 'summary',
                '--simulate_devices', '64', '--config.train.batch_size=64', '--config.eval.batch_size=64')
  assert result.returncode == 0, result.stderr[-3000:]
  written = json.loads((tmp_path / 'summary.json').read_text())
  config = load('configs/demo.py')
  assert {key: written[key] for key in ('params_total', 'params_inference')} == summary.parameter_counts(config)
  assert written['params_inference'] < written['params_total'] - written['params_by_module']['aux_head']  # SE too
  assert written['flops_inference'] > 0
  memory = written['memory']
  assert (memory['devices'], memory['platform'], memory['remat']) == (64, 'cpu', False)
  assert memory['train_batch_per_device'] == memory['eval_batch_per_device'] == 1
  state = experiment.build(config, jax.devices()[:1]).abstract_state()
  state_bytes = sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
  crop_bytes = math.prod(config.data.crop_size) * 4  # one image (3 bytes a pixel) and its label (1)
  for key in ('train', 'train_remat'):
    figures = memory[key]
    assert figures['argument_bytes'] >= state_bytes + crop_bytes  # a whole replica of the state on every device
    assert figures['output_bytes'] >= state_bytes
    assert 0 < figures['alias_bytes'] <= figures['output_bytes']  # the donated state's buffers are reused
    assert figures['total_bytes'] == (figures['argument_bytes'] + figures['output_bytes'] - figures['alias_bytes']
                                      + figures['temp_bytes'] + figures['code_bytes'])
  assert memory['train_remat']['temp_bytes'] < memory['train']['temp_bytes']  # rematerialisation saves memory
  inference_bytes = written['params_inference'] * 4  # float32; jit leaves out the training-only heads' parameters
  assert memory['eval']['argument_bytes'] >= inference_bytes and memory['eval']['temp_bytes'] > 0
  assert '64 cpu device(s)' in result.stdout and 'remat on' in result.stdout


def test_simulated_devices_need_divisible_batches_and_summary_mode(tmp_path):
  result = _cli('--config', 'configs/demo.py', '--workdir', str(tmp_path), '--mode', 'summary',
                '--simulate_devices', '64')
  assert result.returncode == 2
  assert 'config.train.batch_size=16 must be a multiple of the number of devices (64' in result.stderr
  result = _cli('--config', 'configs/demo.py', '--workdir', str(tmp_path), '--simulate_devices', '64')
  assert result.returncode == 2 and '--simulate_devices only applies to --mode summary' in result.stderr
