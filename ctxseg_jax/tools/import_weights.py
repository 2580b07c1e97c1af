"""Import published weights into an Orbax checkpoint of a configured model.

python -m ctxseg_jax.tools.import_weights --config configs/encnet_pcontext.py --from encnet_resnet50s_pcontext.pth \
    --out runs/encnet_pte [--layout pte] [--skip conv_seg --skip se_layer]

Reads a PyTorch .pth/.pt (torch.load(weights_only=True); needs the 'torch' extra) or a .safetensors file, maps its
keys to the model's parameter tree (the layout is detected from the keys unless --layout names it; see
ctxseg_jax.weights.layouts) and writes <out>/checkpoints/0 with the model's params and batch_stats, the config,
and the source file's path, layout and sha256. A backbone (ImageNet) file fills the backbone; the heads keep the
config's initialisation. Then:
  python -m ctxseg_jax.main --config CONFIG --workdir OUT --mode eval      (or --mode predict)
  python -m ctxseg_jax.main --config CONFIG --config.model.pretrained=OUT --workdir NEW_RUN    (fine-tune)
Strict: every model tensor in scope must be filled and every file tensor used; --skip REGEX leaves the matching
tensors out on both sides (a head of another class count: --skip conv_seg --skip se_layer).
Exit codes: 0 written; 2 refused (bad flags or config, unreadable file, a file that does not fit the model).
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file of the model to import into (configs/*.py); '
                                          'override values with --config.KEY=VALUE.', lock_config=True)
_FROM = flags.DEFINE_string('from', None, 'The weights file: .pth/.pt (PyTorch) or .safetensors.')
_OUT = flags.DEFINE_string('out', None, 'Folder to write the checkpoint to (must not hold checkpoints yet).')
_LAYOUT = flags.DEFINE_string('layout', '', "The file's layout (see ctxseg_jax.weights.layouts.LAYOUTS); default: "
                              'detected from its keys.')
_SKIP = flags.DEFINE_multi_string('skip', [], 'Regex over our parameter paths or the file keys to leave out of the '
                                  'import (repeatable); skipped model tensors keep their initialisation.')


def _fail(message: str) -> None:
  print(f'Error: {message}', file=sys.stderr)
  sys.exit(2)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}')
  for name, flag in (('config', _CONFIG), ('from', _FROM), ('out', _OUT)):
    if flag.value is None:
      _fail(f'--{name} is required')
  logging.set_verbosity(logging.WARNING)
  from ctxseg_jax import checkpoints, experiment, reporting
  from ctxseg_jax.config import ConfigError
  from ctxseg_jax.weights import ERRORS, pretrained

  config = _CONFIG.value
  try:
    exp = experiment.build(config)
    if checkpoints.checkpoint_dir(_OUT.value).exists():
      _fail(f'{checkpoints.checkpoint_dir(_OUT.value)} exists; choose a new --out folder')
    state = exp.init_state()
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    imported = pretrained.load(_FROM.value, config.model, pretrained.shapes(variables), layout=_LAYOUT.value,
                               skip=_SKIP.value)
  except (ConfigError, *ERRORS) as e:
    _fail(str(e))
  variables = pretrained.overlay(variables, imported)
  record = {'source': imported.source, 'sha256': imported.sha256, 'layout': imported.layout,
            'scope': imported.scope, 'skip': list(_SKIP.value)}
  checkpointer = checkpoints.Checkpointer(_OUT.value)
  checkpointer.save(0, {'step': 0, **variables}, None, config, extra={checkpoints.IMPORTED_KEY: record})
  checkpointer.wait()
  checkpointer.close()
  reporting.console(f'Wrote {pretrained.describe(imported)} to {checkpointer.directory}/0')


if __name__ == '__main__':
  app.run(main)
