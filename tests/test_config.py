import os
import subprocess
import sys

import pytest

from ctxseg_jax import config as config_lib
from ctxseg_jax import experiment, summary
from tests.shipped_configs import CONFIGS, ROOT, load


@pytest.mark.parametrize('path', CONFIGS)
def test_shipped_configs_validate(path):
  config = load(path)
  experiment.validate_config(config)
  assert config.name.startswith(os.path.splitext(os.path.basename(path))[0])  # + the cell, for a file taking one


CONTEXTRAST_CELLS = [f'{model},{dataset}{suffix}' for model in ('deeplabv3_r101', 'hrnet_w48', 'ocrnet_hr48')
                     for dataset in ('cityscapes', 'camvid', 'ade20k', 'pcontext', 'coco_stuff')
                     for suffix in ('', ',baseline')]


@pytest.mark.parametrize('cell', CONTEXTRAST_CELLS)
def test_every_contextrast_cell_validates_and_differs_from_its_baseline_only_by_contextrast(cell):
  config = load(f'configs/contextrast.py:{cell}')
  experiment.validate_config(config)
  if not cell.endswith('baseline'):
    baseline = load(f'configs/contextrast.py:{cell},baseline')
    added = set(config.model.heads) - set(baseline.model.heads)
    assert added == {'proj_1', 'proj_2', 'proj_3', 'proj_4'}
    assert set(config.loss.terms) - set(baseline.loss.terms) == {'contextrast'}
    with config.unlocked():
      config.name = baseline.name
      for name in added:
        del config.model.heads[name]
      del config.loss.terms['contextrast']
    assert config.to_dict() == baseline.to_dict()


def test_a_cell_that_does_not_exist_names_the_valid_ones():
  with pytest.raises(ValueError, match=r"contextrast.py:deeplabv3_r101,voc is not a cell.*'coco_stuff'"):
    load('configs/contextrast.py:deeplabv3_r101,voc')


def test_demo_pair_differs_only_in_the_decode_head_and_the_se_loss():
  encnet, fcn = load('configs/demo.py'), load('configs/demo_fcn.py')
  assert (encnet.model.heads.decode_head.type, fcn.model.heads.decode_head.type) == ('enc', 'fcn')
  assert set(encnet.loss.terms) - set(fcn.loss.terms) == {'se'}
  for config in (encnet, fcn):
    with config.unlocked():
      config.name = 'demo'
      del config.model.heads['decode_head']
  with encnet.unlocked():
    del encnet.loss.terms['se']
  assert encnet.to_dict() == fcn.to_dict()


def test_paper_configs_pair_encnet_with_its_fcn_baseline():
  for dataset in ('pcontext', 'ade20k', 'cityscapes'):
    encnet, fcn = load(f'configs/encnet_{dataset}.py'), load(f'configs/fcn_{dataset}.py')
    assert (encnet.model.heads.decode_head.type, fcn.model.heads.decode_head.type) == ('enc', 'fcn')
    assert encnet.model.backbone == fcn.model.backbone
    assert encnet.model.heads.aux_head == fcn.model.heads.aux_head
    for section in ('data', 'optim', 'train', 'eval'):
      assert encnet[section].to_dict() == fcn[section].to_dict(), (dataset, section)
    assert encnet.loss.terms.ce == fcn.loss.terms.ce and encnet.loss.terms.aux == fcn.loss.terms.aux
    assert set(encnet.loss.terms) == {'ce', 'aux', 'se'} and set(fcn.loss.terms) == {'ce', 'aux'}
    shared = ('channels', 'dropout', 'dropout_mode')
    assert ({k: encnet.model.heads.decode_head[k] for k in shared}
            == {k: fcn.model.heads.decode_head[k] for k in shared})


def test_inference_head_reading_a_training_only_output_is_refused():
  config = config_lib.base_config()
  config.model.heads.decode_head.reads_outputs = ('aux_logits',)
  with pytest.raises(config_lib.ConfigError, match="runs at inference but reads 'aux_logits', which exists only in "
                                                   'training'):
    experiment.validate_config(config)


def test_unknown_setting_in_a_component_config_is_named():
  config = config_lib.base_config()
  with config.model.heads.decode_head.unlocked():
    config.model.heads.decode_head.chanels = 3
  with pytest.raises(config_lib.ConfigError, match="decode_head.chanels is not a setting of head 'fcn'.*did you "
                                                   "mean 'channels'"):
    experiment.validate_config(config)


def test_typo_in_config_file_names_the_key():
  config = config_lib.base_config()
  with pytest.raises(AttributeError, match='stpes'):
    config.train.stpes = 3


@pytest.mark.parametrize('key, value, fragment', [
    ('model.backbone.stem', 'v1d', "config.model.backbone.stem='v1d' is not valid"),
    ('loss.terms.ce.reduction', 'mean', "config.loss.terms.ce.reduction='mean' is not valid; choose one of "
                                        "['valid', 'all', 'ohem']"),
    ('loss.terms.aux.output', 'aux', "config.loss.terms.aux.output='aux' is not an output of the model"),
    ('loss.terms.aux.weight', -1.0, 'config.loss.terms.aux.weight=-1.0 must be >= 0'),
    ('model.heads.decode_head.dropout', 1.0, 'config.model.heads.decode_head.dropout=1.0 must be in [0, 1)'),
    ('model.heads.decode_head.reads', (4,), "reads=(4,): backbone 'resnet' has stages 0..3"),
    ('model.heads.decode_head.dropout_mode', 'spatial', "dropout_mode='spatial' is not valid"),
    ('model.heads.decode_head.train_only', True, 'no enabled inference head publishes "logits"'),
    ('model.heads.aux_head.reads_outputs', ('se_logits',), "reads_outputs names 'se_logits', which no"),
    ('model.heads.aux_head.outputs', ('logits',), "'logits' is already published by head 'aux_head'"),
    ('model.backbone.depth', 102, "config.model.backbone.depth=102 is not valid; choose one of [18, 34, 50, 101, 152]"),
    ('optim.lr_mults', (('(', 10.0),), "config.optim.lr_mults pattern '(' is not a valid regex"),
    ('optim.lr_mults', ((10.0, 'x'),), 'must be (regex, multiplier >= 0)'),
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


def test_ohem_groups_must_tile_the_batch():
  config = config_lib.base_config()
  config.train.batch_size = 16
  config.loss.terms.ce.reduction = 'ohem'
  config.loss.terms.ce.ohem_group_size = 4
  experiment.validate_config(config)
  config.loss.terms.ce.ohem_group_size = 6
  with pytest.raises(config_lib.ConfigError, match='ohem_group_size=6 does not divide config.train.batch_size=16'):
    experiment.validate_config(config)


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


def _problems(config):
  with pytest.raises(config_lib.ConfigError) as error:
    experiment.validate_config(config)
  return str(error.value)


def test_hrnet_520_settings_need_their_protocol_and_windows():
  config = config_lib.base_config()
  config.eval.short_side = 520
  assert "short_side, fit_stride and crop_fit_padding are for eval.combine='hrnet_520' only" in _problems(config)
  config.eval.combine = 'hrnet_520'
  assert 'set --config.eval.mode=slide' in _problems(config)
  config.eval.mode, config.eval.fit_stride = 'slide', 0
  assert 'config.eval.fit_stride=0 must be' in _problems(config)


def test_an_output_a_head_does_not_return_with_its_settings_cannot_be_read():
  config = load('configs/demo.py')
  config.model.heads.decode_head.se_head = False  # EncHead then returns no se_logits
  assert "config.loss.terms.se.output='se_logits' is not an output of the model" in _problems(config)
  config.loss.terms.se.weight = 0.0  # the term is left out: valid
  experiment.validate_config(config)


def test_a_head_is_left_out_with_enabled_false_and_its_term_with_weight_zero():
  config = load('configs/demo.py')
  config.model.heads.aux_head.enabled = False
  assert "config.loss.terms.aux.output='aux_logits' is not an output of the model" in _problems(config)
  config.loss.terms.aux.weight = 0.0
  experiment.validate_config(config)
  with_aux = summary.parameter_counts(load('configs/demo.py'))
  without = summary.parameter_counts(config)
  aux_head = (3 * 3 * 64 * 32 + 2 * 32) + (32 * 8 + 8)  # 3x3 ConvModule on stage 3 (64 ch) -> 32, 1x1 -> 8
  assert with_aux['params_total'] - without['params_total'] == aux_head
  assert with_aux['params_inference'] == without['params_inference']


def test_a_loss_with_no_positive_weight_is_refused():
  config = config_lib.base_config()
  config.loss.terms.ce.weight = 0.0
  config.loss.terms.aux.weight = 0.0
  assert 'no term has a weight > 0, so there is nothing to train' in _problems(config)


def test_class_weights_need_one_weight_per_class_of_the_dataset():
  config = config_lib.base_config()  # synthetic_context: 8 classes
  config.loss.terms.ce.class_weight = (1.0, 2.0)
  assert 'config.loss.terms.ce.class_weight has 2 entries; the dataset has 8 classes' in _problems(config)
  config.loss.terms.ce.class_weight = (1.0,) * 7 + (-1.0,)
  assert 'must be a tuple of numbers >= 0' in _problems(config)
  config.loss.terms.ce.class_weight = (1.0,) * 8
  experiment.validate_config(config)


@pytest.mark.parametrize('head, key, value, fragment', [
    ('aux_head', 'reads', (1, 2), "the 'fcn' head with these settings takes 1 feature map(s); reads=(1, 2)"),
    ('decode_head', 'reads_outputs', ('aux_logits',), "the 'fcn' head takes 0 output(s) of earlier heads"),
    ('aux_head', 'outputs', ('stage_features',), "'stage_features' is reserved for the backbone's stage outputs"),
])
def test_head_inputs_and_outputs_are_checked_before_running(head, key, value, fragment):
  config = config_lib.base_config()
  config.model.heads[head][key] = value
  assert fragment in _problems(config)


def test_lateral_enc_head_needs_three_stages():
  config = load('configs/encnet_pcontext.py')
  config.model.heads.decode_head.reads = (3,)
  assert "the 'enc' head with these settings takes 3 feature map(s)" in _problems(config)
  config.model.heads.decode_head.lateral = False
  experiment.validate_config(config)
