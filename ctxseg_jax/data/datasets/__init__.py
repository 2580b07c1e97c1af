"""The dataset registry: `config.data.name` -> class metadata and per-split sources."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Callable

from absl import logging
import ml_collections

from ctxseg_jax.data.datasets import ade20k
from ctxseg_jax.data.datasets import camvid
from ctxseg_jax.data.datasets import cifar10
from ctxseg_jax.data.datasets import cifar10_tfds
from ctxseg_jax.data.datasets import cityscapes
from ctxseg_jax.data.datasets import cityscapes_tfds
from ctxseg_jax.data.datasets import coco_stuff
from ctxseg_jax.data.datasets import files
from ctxseg_jax.data.datasets import folder
from ctxseg_jax.data.datasets import packed
from ctxseg_jax.data.datasets import pascal_context
from ctxseg_jax.data.datasets import synthetic_classification
from ctxseg_jax.data.datasets import synthetic_context
from ctxseg_jax.data.datasets.base import DataError, DatasetInfo, SegmentationSource, check_sample
from ctxseg_jax.data.datasets.folder import FolderSource, folder_info
from ctxseg_jax.data.datasets.synthetic_classification import (SYNTHETIC_CLASSIFICATION_INFO,
                                                               SyntheticClassificationSource)
from ctxseg_jax.data.datasets.synthetic_context import SYNTHETIC_CONTEXT_INFO, SyntheticContextSource


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
  """How to get a dataset's metadata and its splits from `config.data`."""
  info: Callable[[ml_collections.ConfigDict], DatasetInfo]
  build: Callable[[ml_collections.ConfigDict, str], SegmentationSource]


def _synthetic_source(source_class: type[SyntheticContextSource]
                      ) -> Callable[[ml_collections.ConfigDict, str], SyntheticContextSource]:
  """The build function of a generated dataset (config.data.synthetic: sizes of its 'train' and 'val' splits, image
  size, seed)."""

  def build(data_config: ml_collections.ConfigDict, split: str) -> SyntheticContextSource:
    cfg = data_config.synthetic
    sizes = {'train': cfg.num_train, 'val': cfg.num_val}
    if split not in sizes:
      raise DataError(f'{source_class.info.name} has no split {split!r}; its splits are {sorted(sizes)} (check '
                      '--config.data.train_split and --config.data.eval_split)')
    return source_class(split, sizes[split], image_size=cfg.image_size, seed=cfg.seed)

  return build


def _folder_root(data_config: ml_collections.ConfigDict) -> str:
  if not data_config.root:
    raise DataError('config.data.root is empty; data.name=folder reads a dataset folder: set '
                    '--config.data.root=/path/to/dataset (local or gs://). Write one with '
                    'python -m ctxseg_jax.data.export --config <config.py> --out <dir>')
  return data_config.root


DATASETS: dict[str, DatasetEntry] = {
    'synthetic_context': DatasetEntry(info=lambda data_config: SYNTHETIC_CONTEXT_INFO,
                                      build=_synthetic_source(SyntheticContextSource)),
    'synthetic_classification': DatasetEntry(info=lambda data_config: SYNTHETIC_CLASSIFICATION_INFO,
                                             build=_synthetic_source(SyntheticClassificationSource)),
    'folder': DatasetEntry(info=lambda data_config: folder_info(_folder_root(data_config)),
                           build=lambda data_config, split: FolderSource(_folder_root(data_config), split)),
    'packed': DatasetEntry(info=lambda data_config: packed.packed_info(data_config.root),
                           build=lambda data_config, split: packed.PackedSource(data_config.root, split)),
    'pascal_context_59': DatasetEntry(info=lambda data_config: pascal_context.PASCAL_CONTEXT_59_INFO,
                                      build=pascal_context.build_source_59),
    'pascal_context_60': DatasetEntry(info=lambda data_config: pascal_context.PASCAL_CONTEXT_60_INFO,
                                      build=pascal_context.build_source_60),
    'ade20k': DatasetEntry(info=lambda data_config: ade20k.ADE20K_INFO, build=ade20k.build_source),
    'cityscapes': DatasetEntry(info=lambda data_config: cityscapes.CITYSCAPES_INFO, build=cityscapes.build_source),
    'cityscapes_tfds': DatasetEntry(info=lambda data_config: cityscapes.CITYSCAPES_INFO,
                                    build=cityscapes_tfds.CityscapesTfdsSource),
    'coco_stuff164k': DatasetEntry(info=lambda data_config: coco_stuff.COCO_STUFF_164K_INFO,
                                   build=coco_stuff.build_source_164k),
    'coco_stuff10k': DatasetEntry(info=lambda data_config: coco_stuff.COCO_STUFF_10K_INFO,
                                  build=coco_stuff.build_source_10k),
    'camvid': DatasetEntry(info=lambda data_config: camvid.CAMVID_INFO, build=camvid.build_source),
    'cifar10': DatasetEntry(info=lambda data_config: cifar10.CIFAR10_INFO, build=cifar10.build_source),
    'cifar10_tfds': DatasetEntry(info=lambda data_config: cifar10.CIFAR10_INFO, build=cifar10_tfds.Cifar10TfdsSource),
}
# The generated datasets: config.data.synthetic describes them.
SYNTHETIC = ('synthetic_context', 'synthetic_classification')


def _entry(data_config: ml_collections.ConfigDict) -> DatasetEntry:
  name = data_config.name
  if name not in DATASETS:
    hint = difflib.get_close_matches(str(name), list(DATASETS), n=1)
    raise DataError(f'config.data.name={name!r} is not a known dataset; choose one of {list(DATASETS)}'
                    + (f' (did you mean {hint[0]!r}?)' if hint else ''))
  return DATASETS[name]


def dataset_info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
  """The configured dataset's metadata (reads at most a dataset.json, never a sample)."""
  return _entry(data_config).info(data_config)


def build_source(data_config: ml_collections.ConfigDict, split: str, *, strict: bool = True) -> SegmentationSource:
  """The configured dataset's split `split`; lists files but decodes nothing.

  With strict=True (training, evaluation) any listing problem (an image without its label, ...) raises one
  DataError naming the files; with strict=False (`--mode check_data`) the source keeps them in `.problems` and
  holds the complete pairs only.
  """
  source = _entry(data_config).build(data_config, split)
  if strict:
    if getattr(source, 'problems', None):
      source.raise_problems()
    for note in getattr(source, 'notes', ()):
      logging.warning(note)
  return source


__all__ = [
    'DATASETS', 'DataError', 'DatasetEntry', 'DatasetInfo', 'FolderSource', 'SYNTHETIC',
    'SYNTHETIC_CLASSIFICATION_INFO', 'SYNTHETIC_CONTEXT_INFO', 'SegmentationSource', 'SyntheticClassificationSource',
    'SyntheticContextSource', 'ade20k', 'build_source', 'camvid', 'check_sample', 'cifar10', 'cifar10_tfds',
    'cityscapes', 'cityscapes_tfds', 'coco_stuff', 'dataset_info', 'files', 'folder', 'folder_info', 'packed',
    'pascal_context', 'synthetic_classification', 'synthetic_context',
]
