"""Packs the configured dataset's splits into ArrayRecord shards (the layout `data.name=packed` reads).

    python -m ctxseg_jax.data.pack --config configs/encnet_cityscapes.py --config.data.root=/data/cityscapes \
        --out gs://my-bucket/cityscapes_packed [--splits train,val] [--records_per_shard 1024] [--workers 8]

Each record keeps the source's encoded image bytes when they are JPEG or PNG (no re-encoding, no quality loss)
and stores the label as a PNG of training ids, so readers need no dataset-specific mapping. Every sample is
decoded and checked while packing: a broken file stops the packing with its path. With a gs:// --out, shards
are written to a local temporary folder and then copied.
"""
from __future__ import annotations

import concurrent.futures
import json
import sys
import tempfile
import time

from absl import app
from absl import flags
from etils import epath
from ml_collections import config_flags
from PIL import Image

from ctxseg_jax.data import datasets
from ctxseg_jax.data import export
from ctxseg_jax.data.datasets import folder
from ctxseg_jax.data.datasets import packed


_JPEG_MAGIC, _PNG_MAGIC = b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n'


def _encoded_image(source: datasets.SegmentationSource, index: int, image) -> bytes:
  """The image's stored bytes when the source keeps them (`encoded_image`) and they are JPEG or PNG; otherwise a
  PNG of `image` (uint8 (H, W, 3))."""
  if hasattr(source, 'encoded_image'):
    data = source.encoded_image(index)
    if data.startswith((_JPEG_MAGIC, _PNG_MAGIC)):
      return data
  return export.png_bytes(Image.fromarray(image))


def _record(source: datasets.SegmentationSource, index: int, palette: list[int]) -> bytes:
  sample = source[index]
  problems = datasets.check_sample(sample, source.info, source.sample_name(index))
  if problems:
    raise datasets.DataError('\n'.join(problems))
  label = Image.fromarray(sample['label'])
  label.putpalette(palette)
  height, width = sample['label'].shape
  return packed.encode_record(_encoded_image(source, index, sample['image']), export.png_bytes(label),
                              sample['name'], height, width)


def pack_split(source: datasets.SegmentationSource, out_dir: epath.Path, split: str, *, records_per_shard: int,
               workers: int) -> dict:
  """Writes `source` as <split>-<i>-of-<n>.array_record shards in `out_dir` (local); returns its split entry."""
  from array_record.python import array_record_module
  num_shards = max(1, -(-len(source) // records_per_shard))
  names = [f'{split}-{i:05d}-of-{num_shards:05d}.array_record' for i in range(num_shards)]
  palette = export.label_palette(source.info)
  start = time.time()
  with concurrent.futures.ThreadPoolExecutor(max(workers, 1)) as pool:
    records = pool.map(lambda i: _record(source, i, palette), range(len(source)))
    writer = None
    for index, record in enumerate(records):
      if index % records_per_shard == 0:
        if writer is not None:
          writer.close()
        # group_size:1 keeps every record individually addressable: random access reads one record.
        writer = array_record_module.ArrayRecordWriter(str(out_dir / names[index // records_per_shard]),
                                                       'group_size:1')
      writer.write(record)
      if (index + 1) % 100 == 0 or index + 1 == len(source):
        print(f'\r  {split}: {index + 1}/{len(source)} packed ({time.time() - start:.0f}s)', end='',
              file=sys.stderr, flush=True)
    if writer is not None:
      writer.close()
  print(file=sys.stderr)
  return {'num_records': len(source), 'shards': names}


def pack(config, out: str, splits: list[str], *, records_per_shard: int = 1024, workers: int = 8,
         overwrite: bool = False) -> None:
  """Packs `splits` of the dataset `config.data` describes into `out` (local or gs://)."""
  out_root = epath.Path(out)
  if (out_root / folder.INFO_FILE).exists() and not overwrite:
    raise datasets.DataError(f'{out_root / folder.INFO_FILE} exists; choose an empty --out or pass --overwrite')
  info = datasets.dataset_info(config.data)
  metadata = dict(export.info_json(info), format=packed.FORMAT, splits={})
  with tempfile.TemporaryDirectory() as tmp:
    local = epath.Path(tmp) if str(out).startswith('gs://') else out_root
    local.mkdir(parents=True, exist_ok=True)
    for split in splits:
      source = datasets.build_source(config.data, split)
      metadata['splits'][split] = pack_split(source, local, split, records_per_shard=records_per_shard,
                                             workers=workers)
    if local != out_root:
      out_root.mkdir(parents=True, exist_ok=True)
      for entry in metadata['splits'].values():
        for name in entry['shards']:
          (local / name).copy(out_root / name, overwrite=True)
  (out_root / folder.INFO_FILE).write_text(json.dumps(metadata, indent=2) + '\n')


def main(argv: list[str]) -> None:
  export.run_dataset_cli(
      argv, _CONFIG.value, _OUT.value, _SPLITS.value,
      lambda config, out, splits: pack(config, out, splits, records_per_shard=_RECORDS_PER_SHARD.value,
                                       workers=_WORKERS.value, overwrite=_OVERWRITE.value),
      'packed {splits} into {out}; train on it with --config.data.name=packed --config.data.root={out}')


if __name__ == '__main__':
  # Flags are defined only when run as a program, so the module imports anywhere without flag clashes.
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file whose data section names the dataset.')
  _OUT = flags.DEFINE_string('out', None, 'Output folder (local or gs://).')
  _SPLITS = flags.DEFINE_list('splits', None, 'Splits to pack; default: config.data.train_split and eval_split.')
  _RECORDS_PER_SHARD = flags.DEFINE_integer('records_per_shard', 1024, 'Samples per ArrayRecord shard.')
  _WORKERS = flags.DEFINE_integer('workers', 8, 'Threads that decode, check and encode samples.')
  _OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing packed dataset in --out.')
  app.run(main)
