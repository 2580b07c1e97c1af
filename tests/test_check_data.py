"""--mode check_data names every defective file, and passes clean data."""
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from ctxseg_jax.check_data import check_data
from ctxseg_jax.data import export
from tests import layouts
from tests.tiny_config import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _folder_config(root):
  config = get_config()
  config.data.name = 'folder'
  config.data.root = str(root)
  return config


def _exported(tmp_path):
  export.export(get_config(), tmp_path, ['train', 'val'])
  return tmp_path


def test_clean_synthetic_and_exported_data_pass(tmp_path, capsys):
  assert check_data(get_config()) == []
  assert check_data(_folder_config(_exported(tmp_path))) == []
  out = capsys.readouterr().out
  assert 'Class frequencies in synthetic_context/train' in out and 'No problems found.' in out


def test_each_corrupted_file_is_named(tmp_path):
  root = _exported(tmp_path)
  truncated = root / 'images' / 'train' / sorted(os.listdir(root / 'images' / 'train'))[3]
  truncated.write_bytes(truncated.read_bytes()[:200])
  bad_label = root / 'labels' / 'val' / sorted(os.listdir(root / 'labels' / 'val'))[1]
  label = np.array(Image.open(bad_label))
  label[0, 0] = 42
  Image.fromarray(label).save(bad_label)
  problems = check_data(_folder_config(root))
  assert len(problems) == 2
  assert str(truncated) in problems[0]
  assert str(bad_label) in problems[1] and '[42]' in problems[1] and '0..7' in problems[1]

  result = subprocess.run(
      [sys.executable, '-m', 'ctxseg_jax.main', '--config', 'tests/tiny_config.py', '--mode', 'check_data',
       '--config.data.name=folder', f'--config.data.root={root}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, 'XLA_FLAGS': ''})
  assert result.returncode == 1
  assert str(truncated) in result.stdout and str(bad_label) in result.stdout


def test_real_layout_defects_are_all_reported_and_the_rest_checked(tmp_path, capsys):
  written = layouts.ade20k(tmp_path, size=(24, 32))
  orphan_image, orphan_label, _ = written['train'][0]
  orphan_label.unlink()
  truncated = written['train'][1][0]
  truncated.write_bytes(truncated.read_bytes()[:200])
  _, bad_label, raw = written['val'][1]
  raw = raw.copy()
  raw[0, 0] = 151
  Image.fromarray(raw).save(bad_label)
  config = get_config()
  config.data.name, config.data.root = 'ade20k', str(tmp_path)
  problems = check_data(config)
  assert len(problems) == 3
  assert str(orphan_image) in problems[0] and str(orphan_label) in problems[0]
  assert str(truncated) in problems[1]
  assert str(bad_label) in problems[2] and '[151]' in problems[2]
  out = capsys.readouterr()
  assert 'found 2 image/label pairs, the official split has 20210' in out.out  # the split-size note
  assert 'Checking ade20k/train' in out.err and '3/3' not in out.err and '2/2' in out.err  # the orphan is skipped
