import os
import subprocess
import sys

import pytest

from ctxseg_jax import config as config_lib
from ctxseg_jax import experiment
from tests.shipped_configs import CONFIGS, ROOT, load





@pytest.mark.parametrize('path', CONFIGS)
def test_shipped_configs_validate(path):
  config = load(path)
  experiment.validate_config(config)
  assert config.name == os.path.splitext(os.path.basename(path))[0]


def test_demo_pair_differs_only_in_the_model():
  encnet, fcn = load('configs/demo.py'), load('configs/demo_fcn.py')
  assert (encnet.model.name, fcn.model.name) == ('encnet', 'fcn')
  for config in (encnet, fcn):
    with config.unlocked():
      config.name = 'demo'
      del config['model']
  assert encnet.to_dict() == fcn.to_dict()


def test_paper_configs_pair_encnet_with_its_fcn_baseline():
  for dataset in ('pcontext', 'ade20k', 'cityscapes'):
    encnet, fcn = load(f'configs/encnet_{dataset}.py'), load(f'configs/fcn_{dataset}.py')
    assert (encnet.model.name, fcn.model.name) == ('encnet', 'fcn')
    assert encnet.model.backbone == fcn.model.backbone
    for section in ('data', 'optim', 'train', 'eval'):
      assert encnet[section].to_dict() == fcn[section].to_dict(), (dataset, section)
    assert encnet.loss.aux_weight == fcn.loss.aux_weight and encnet.loss.ce_reduction == fcn.loss.ce_reduction


def test_typo_in_config_file_names_the_key():
  config = config_lib.base_config()
  with pytest.raises(AttributeError, match='stpes'):
    config.train.stpes = 3


@pytest.mark.parametrize('key, value, fragment', [
    ('model.backbone.stem', 'v1d', "config.model.backbone.stem='v1d' is not valid"),
    ('loss.ce_reduction', 'mean', "choose one of ['valid', 'all']"),
    ('train.steps', 0, 'config.train.steps=0 must be > 0'),
    ('data.crop_size', (64,), 'config.data.crop_size=(64,) must be a pair'),
    ('model.dtype', 'float16', "did you mean 'bfloat16'"),
    ('data.name', 'cityscape', "choose one of ["),
])
def test_invalid_values_name_key_and_valid_choices(key, value, fragment):
  config = config_lib.base_config()
  section, leaf = key.rsplit('.', 1)
  config_lib.get(config, section)[leaf] = value
  with pytest.raises(config_lib.ConfigError) as error:
    experiment.validate_config(config)
  assert fragment in str(error.value)


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'ctxseg_jax.main', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def test_cli_rejects_unknown_override_with_suggestion():
  result = _cli('--config', 'configs/demo.py', '--config.train.stepz=3', '--mode', 'summary')
  assert result.returncode == 2
  assert 'stepz' in result.stderr and 'Did you mean "steps"' in result.stderr
  assert 'Traceback' not in result.stderr


def test_cli_rejects_invalid_value_before_running():
  result = _cli('--config', 'configs/demo.py', '--config.optim.momentum=1.5', '--mode', 'summary')
  assert result.returncode == 2
  assert 'config.optim.momentum=1.5 must be in [0, 1)' in result.stderr


def test_cli_rejects_mistyped_value():
  result = _cli('--config', 'configs/demo.py', '--config.train.steps=abc')
  assert result.returncode != 0 and 'train.steps' in result.stderr and 'Traceback' not in result.stderr
