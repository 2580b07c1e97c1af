"""Writes the configured dataset's splits as a dataset folder (the layout `FolderSource` reads).

    python -m ctxseg_jax.data.export --config configs/demo.py --out /tmp/synthetic [--splits train,val]

Images and labels are written as PNG (lossless), labels in palette mode with the dataset's colours, so they
are viewable as they are and still read back as raw class ids. The output then trains with
`--config.data.name=folder --config.data.root=<out>`.
"""
from __future__ import annotations

import io
import json
import sys
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
from etils import epath
from ml_collections import config_flags
import numpy as np
from PIL import Image

from ctxseg_jax import config as config_lib
from ctxseg_jax.data import datasets
from ctxseg_jax.data.datasets import folder


_IGNORE_COLOUR = (255, 255, 255)


def info_json(info: datasets.DatasetInfo) -> dict:
  return {'name': info.name, 'class_names': list(info.class_names),
          'palette': [list(c) for c in info.palette], 'ignore_index': info.ignore_index}


def write_dataset_json(info: datasets.DatasetInfo, out_root: str | epath.PathLike) -> None:
  out_root = epath.Path(out_root)
  out_root.mkdir(parents=True, exist_ok=True)
  (out_root / folder.INFO_FILE).write_text(json.dumps(info_json(info), indent=2) + '\n')


def png_bytes(image: Image.Image) -> bytes:
  """Lossless PNG encoding of a PIL image."""
  buffer = io.BytesIO()
  image.save(buffer, format='PNG')
  return buffer.getvalue()


def label_palette(info: datasets.DatasetInfo) -> list[int]:
  """A 256-entry flat RGB palette: class colours, `_IGNORE_COLOUR` at ignore_index, black elsewhere."""
  colours = np.zeros((256, 3), np.uint8)
  colours[:info.num_classes] = info.palette
  colours[info.ignore_index] = _IGNORE_COLOUR
  return colours.reshape(-1).tolist()


def export_split(source: datasets.SegmentationSource, out_root: str | epath.PathLike, split: str, *,
                 overwrite: bool = False) -> int:
  """Writes every sample of `source` as out_root/{images,labels}/<split>/<index>.png; returns the count.

  Stems are zero-padded indices, so the folder lists the samples in source order. Each sample is checked
  with `check_sample` first, so a broken source fails here rather than at training time.
  """
  out_root = epath.Path(out_root)
  image_dir, label_dir = out_root / 'images' / split, out_root / 'labels' / split
  for d in (image_dir, label_dir):
    if d.exists() and any(d.iterdir()):
      if not overwrite:
        raise datasets.DataError(f'{d} already holds files; choose an empty --out or pass --overwrite')
      d.rmtree()
    d.mkdir(parents=True, exist_ok=True)
  palette = label_palette(source.info)
  width = max(6, len(str(len(source) - 1)))
  for index in range(len(source)):
    sample = source[index]
    problems = datasets.check_sample(sample, source.info, source.sample_name(index))
    if problems:
      raise datasets.DataError('\n'.join(problems))
    stem = f'{index:0{width}d}'
    (image_dir / f'{stem}.png').write_bytes(png_bytes(Image.fromarray(sample['image'])))
    label = Image.fromarray(sample['label'])
    label.putpalette(palette)
    (label_dir / f'{stem}.png').write_bytes(png_bytes(label))
    if (index + 1) % 500 == 0:
      logging.info('%s: %d / %d samples written', split, index + 1, len(source))
  return len(source)


def export(config, out_root: str | epath.PathLike, splits: list[str], *, overwrite: bool = False) -> None:
  """Exports `splits` of the dataset `config.data` describes, plus its dataset.json."""
  info = datasets.dataset_info(config.data)
  for split in splits:
    source = datasets.build_source(config.data, split)
    count = export_split(source, out_root, split, overwrite=overwrite)
    logging.info('%s: wrote %d samples to %s', split, count, out_root)
  write_dataset_json(info, out_root)


def run_dataset_cli(argv: list[str], config, out: str | None, splits: list[str] | None,
                    write: Callable[[Any, str, list[str]], None], done: str) -> None:
  """The shared body of the dataset-writing CLIs (export, pack): checks the arguments and the config, runs
  write(config, out, splits) (default splits: train_split and eval_split) and prints `done` (formatted with
  splits and out), or exits with the config or data error."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if config is None or not out:
    raise app.UsageError('pass --config=<config.py> and --out=<folder>')
  splits = splits or list(dict.fromkeys([config.data.train_split, config.data.eval_split]))
  try:
    config_lib.validate(config, known_datasets=datasets.DATASETS)
    if config.data.name in datasets.DATASETS and datasets.dataset_info(config.data).task != 'segmentation':
      raise datasets.DataError(f'data.name={config.data.name!r} is a classification dataset; these layouts hold '
                               'label maps, so it trains from its own source')
    write(config, out, splits)
  except (config_lib.ConfigError, datasets.DataError) as e:
    sys.exit(f'error: {e}')
  print(done.format(splits=', '.join(splits), out=out))


def main(argv: list[str]) -> None:
  run_dataset_cli(argv, _CONFIG.value, _OUT.value, _SPLITS.value,
                  lambda config, out, splits: export(config, out, splits, overwrite=_OVERWRITE.value),
                  'wrote {splits} to {out}; train on it with --config.data.name=folder --config.data.root={out}')


if __name__ == '__main__':
  # Flags are defined only when run as a program, so the module imports anywhere without flag clashes.
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file whose data section names the dataset.')
  _OUT = flags.DEFINE_string('out', None, 'Output dataset folder (local or gs://).')
  _SPLITS = flags.DEFINE_list('splits', None, 'Splits to export; default: config.data.train_split and eval_split.')
  _OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace splits that already exist in --out.')
  app.run(main)
