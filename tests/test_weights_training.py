"""Imported weights in use: the import command, evaluation of its output, and training from pretrained weights."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from bench import torch_reference as ref
from ctxseg_jax import train
from ctxseg_jax.checkpoints import Checkpointer
from ctxseg_jax.evaluate import evaluate
from ctxseg_jax.weights import convert
from tests.tiny_config import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 8  # the synthetic dataset's


def _import(*args):
  return subprocess.run([sys.executable, '-m', 'ctxseg_jax.tools.import_weights', '--config',
                         'tests/tiny_config.py:encnet_pte', *args], cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'}, timeout=300)


@pytest.mark.slow
def test_import_command_refuses_another_class_count_then_writes_a_checkpoint_eval_reads(tmp_path):
  torch_model = ref.randomize_(ref.build_model(get_config('encnet_pte').model.to_dict(), 5, layout='pte'))
  torch.save(torch_model.state_dict(), tmp_path / 'encnet5.pth')
  refused = _import('--from', str(tmp_path / 'encnet5.pth'), '--out', str(tmp_path / 'out'))
  assert refused.returncode == 2, refused.stderr
  assert f"shape mismatch: head.conv6.1.weight is (5, 16, 1, 1) in the file; the model's params/decode_head/" \
         f'conv_seg/kernel needs ({NUM_CLASSES}, 16, 1, 1)' in refused.stderr
  assert not (tmp_path / 'out' / 'checkpoints').exists()

  done = _import('--from', str(tmp_path / 'encnet5.pth'), '--out', str(tmp_path / 'out'), '--skip', 'conv_seg',
                 '--skip', 'se_layer')
  assert done.returncode == 0, done.stderr
  checkpointer = Checkpointer(tmp_path / 'out', create=False)
  step, saved = checkpointer.saved_variables()
  record = checkpointer.saved_config(step)['_imported']
  checkpointer.close()
  assert step == 0 and record['layout'] == 'pte' and len(record['sha256']) == 64
  np.testing.assert_array_equal(saved['params']['decode_head']['bottleneck']['conv']['kernel'],
                                torch_model.head.conv5[0].weight.detach().numpy().transpose(2, 3, 1, 0))
  assert saved['params']['decode_head']['conv_seg']['kernel'].shape[-1] == NUM_CLASSES
  results = evaluate(get_config('encnet_pte'), tmp_path / 'out')
  assert np.isfinite(results['miou'])  # --mode eval restores the imported checkpoint (a misfit raises)


def _resnet50s_file(path, seed):
  """An ImageNet resnet50s (PyTorch-Encoding layout, with fc) with random weights; returns its state dict."""
  state = ref.randomize_(ref.ResNet(50, 's', 8), seed).state_dict()
  state.update({'fc.weight': torch.zeros(10, 256), 'fc.bias': torch.zeros(10)})
  torch.save(state, path)
  return state


def test_training_starts_from_the_pretrained_backbone_and_a_resumed_run_keeps_its_checkpoint(tmp_path):
  """With LR 0 the parameters stay where training started: at the imported backbone. Resuming with another file
  as config.model.pretrained restores the checkpoint and never reads that file."""
  config = get_config('encnet_pte')
  config.optim.lr = 0.0
  config.train.steps = 1
  config.model.pretrained = str(tmp_path / 'first.pth')
  first = _resnet50s_file(tmp_path / 'first.pth', seed=1)
  train.train(config, tmp_path / 'run', devices=jax.devices()[:1])
  _resnet50s_file(tmp_path / 'second.pth', seed=2)
  config.model.pretrained = str(tmp_path / 'second.pth')
  config.train.steps = 2
  train.train(config, tmp_path / 'run', devices=jax.devices()[:1])

  checkpointer = Checkpointer(tmp_path / 'run', create=False)
  step, saved = checkpointer.saved_variables()
  checkpointer.close()
  assert step == 2
  params = convert.flatten(saved['params'])
  np.testing.assert_array_equal(params['backbone/layer3_1/conv2/kernel'],
                                first['layer3.1.conv2.weight'].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['backbone/stem/conv3/bn/scale'], first['bn1.weight'].numpy())
