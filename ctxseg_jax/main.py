"""Command line: python -m ctxseg_jax.main --config configs/demo.py [--workdir DIR] [--mode MODE].

Modes: train (default; resumes from <workdir>/checkpoints when present), eval (latest checkpoint or --step; with
--output OUT, per-image scores in OUT/per_image.csv, and with --worst N the N lowest-scoring images' predictions),
predict (a checkpoint's predictions as images: --input DIR_OR_GLOB, or the eval split, --output OUT),
summary (parameter counts, FLOPs and the compiled steps' memory per device, no data needed; --simulate_devices N
for a slice of N devices), check_data (decode and verify every sample).
Config values are overridden on the command line, e.g. --config.train.steps=100 --config.data.root=/data/x.
A model is a backbone and named heads, the loss named weighted terms, each with its own settings:
--config.model.backbone.depth=50 --config.model.heads.decode_head.channels=256 --config.loss.terms.aux.weight=0.2
Run the same command on every host of a multi-host slice.

Exit codes: 0 done; 1 a failure mid-run (bad data, a checkpoint that does not fit, a non-finite loss, a write that
failed for lack of space or permission, another process of a multi-process job gone); 2 refused before any work
(bad flags or config, a workdir or output folder that cannot be written, a workdir another trainer holds: see
--force_unlock).
"""
from __future__ import annotations

import os
import pathlib
import re
import sys
import traceback

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags

from ctxseg_jax import config_file

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py), optionally '
                                          'followed by ":arg" for get_config(arg). Override any value with '
                                          '--config.KEY=VALUE, e.g. --config.model.heads.decode_head.channels=256 '
                                          'or --config.loss.terms.aux.weight=0.2.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (local or gs://); default runs/<config name>.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'summary', 'check_data'], 'What to do.')
_STEP = flags.DEFINE_integer('step', None, 'With --mode eval or predict: the checkpoint step (default: the latest).')
_INPUT = flags.DEFINE_string('input', None, 'With --mode predict: a folder of images (sub-folders included), a glob '
                             '(quoted) or one image file; default: the eval split (config.data.eval_split), whose '
                             'labels then give per-image scores and comparison images.')
_OUTPUT = flags.DEFINE_string('output', None, 'With --mode predict: the folder the predictions are written to '
                              '(local or gs://); images already complete there are skipped. With --mode eval: '
                              'the folder per_image.csv (and --worst) is written to.')
_WORST = flags.DEFINE_integer('worst', 0, 'With --mode eval --output DIR: also write the predictions and '
                              'comparison images of this many images of lowest mIoU.')
_LABEL_FORMAT = flags.DEFINE_enum('label_format', 'palette', ['palette', 'cityscapes_label_ids'],
                                  'With --mode predict: <stem>.png as a palette PNG of class ids with the dataset '
                                  'colours, or as Cityscapes labelIds (the test server format; Cityscapes only).')
_PREDICT_FLAGS = ('input', 'label_format')
_FORCE_UNLOCK = flags.DEFINE_bool('force_unlock', False, 'With --mode train: take <workdir>/trainer.lock even '
                                  'when it names a trainer that looks alive (use only when that run is known '
                                  'dead; a lock without heartbeat for 10 minutes is taken over anyway).')
_SIMULATE_DEVICES = flags.DEFINE_integer(
    'simulate_devices', None, 'With --mode summary: compile the train and eval steps for this many devices simulated '
    'on the CPU (e.g. 64 for a v5e-64 slice; the global batch sizes --config.train.batch_size and '
    '--config.eval.batch_size must be multiples of it), to size a slice before renting one. Default: the devices of '
    'this machine.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'Multi-process: host:port of process 0 '
                                   '(auto-detected on Cloud TPU VMs and SLURM).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-process: number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-process: index of this process.')


def config_name() -> str:
  """The config file's stem, e.g. 'demo' for configs/demo.py[:arg]."""
  filename = config_flags.get_config_filename(flags.FLAGS['config'])
  return pathlib.Path(filename.split(':')[0]).stem


_verbose = False  # --verbosity >= 1: errors also print their traceback


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that turns config file and config override errors into one clear line and exit code 2."""
  global _verbose
  _verbose = any(re.fullmatch(r'--?(verbosity|v)=([1-9]\d*)', arg) for arg in argv[1:])
  logging.set_verbosity(logging.ERROR)  # config_flags' warnings would add lines to the one-line errors below
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    path = config_file.config_argument(argv)
    if path and not (isinstance(e, flags.Error) and '--config' not in str(e)):
      problem = config_file.file_problem(path)
      if problem:
        _fail(problem)
    if isinstance(e, flags.Error):
      _fail(str(e))
    message = e.args[0] if e.args else str(e)
    message = str(message).strip('\'"').replace('\\n', ' ').replace('\n', ' ').replace("\\'", "'")
    overrides = [a for a in argv[1:] if a.startswith('--config.')]
    _fail(f'cannot apply the config overrides {overrides}: {message}' if overrides
          else f'bad config: {type(e).__name__}: {message}')


def _fail(message: str, code: int = 2):
  if _verbose and sys.exc_info()[0] is not None:
    traceback.print_exc()
  print(f'Error: {message}', file=sys.stderr)
  sys.exit(code)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}; config values are set as --config.KEY=VALUE')
  if not flags.FLAGS['config'].present:
    _fail('--config is required, e.g. --config configs/demo.py')
  if _FORCE_UNLOCK.value and _MODE.value != 'train':
    _fail('--force_unlock only applies to --mode train')
  config = _CONFIG.value
  spec = config_flags.get_config_filename(flags.FLAGS['config'])
  problem = (config_file.file_problem(spec) or f'config file {spec} did not load') if not isinstance(
      config, ml_collections.ConfigDict) else config_file.schema_problem(config, spec.split(':')[0])
  if problem:
    _fail(problem)
  if _STEP.value is not None and _MODE.value not in ('eval', 'predict'):
    _fail(f'--step only applies to --mode eval or predict (--mode {_MODE.value} '
          + ('resumes from the latest checkpoint)' if _MODE.value == 'train' else 'reads no checkpoint)'))
  if _MODE.value != 'predict':
    given = [f'--{name}' for name in _PREDICT_FLAGS if flags.FLAGS[name].present]
    if given:
      _fail(f'{", ".join(given)} only apply to --mode predict')
  elif not _OUTPUT.value:
    _fail('--mode predict needs --output DIR, the folder the predictions are written to')
  if _OUTPUT.value and _MODE.value not in ('eval', 'predict'):
    _fail('--output only applies to --mode eval (per-image scores) or predict')
  if _WORST.present and (_MODE.value != 'eval' or not _OUTPUT.value or _WORST.value < 1):
    _fail('--worst N (N >= 1) applies to --mode eval with --output DIR, the folder its images are written to')
  if _SIMULATE_DEVICES.present:
    _simulate_devices(_SIMULATE_DEVICES.value)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # library INFO logs (orbax, grain) drown the progress lines
  # Imported after flag parsing so that `--help` and flag errors are instant.
  from ctxseg_jax import config as config_lib, experiment, parallel, storage
  from ctxseg_jax.checkpoints import CheckpointDamagedError, CheckpointMismatchError
  from ctxseg_jax.data.datasets.base import DataError
  from ctxseg_jax.progress import NonFiniteLossError
  from ctxseg_jax.weights import ERRORS as WEIGHTS_ERRORS

  parallel.maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if config.name == 'base':
    with config.unlocked():
      config.name = config_name()
  workdir = _WORKDIR.value or f'runs/{config_name()}'
  try:
    experiment.validate_config(config)
    if _MODE.value == 'train':
      from ctxseg_jax import train
      train.train(config, workdir, force_unlock=_FORCE_UNLOCK.value)
    elif _MODE.value == 'eval':
      from ctxseg_jax import evaluate
      evaluate.evaluate(config, workdir, step=_STEP.value, output=_OUTPUT.value, worst=_WORST.value)
    elif _MODE.value == 'predict':
      from ctxseg_jax import predict
      predict.predict(config, workdir, _OUTPUT.value, input_path=_INPUT.value, step=_STEP.value,
                      label_format=_LABEL_FORMAT.value)
    elif _MODE.value == 'summary':
      from ctxseg_jax import summary
      summary.summarize(config, workdir)
    elif _MODE.value == 'check_data':
      from ctxseg_jax import check_data
      if check_data.check_data(config):
        sys.exit(1)
  except (config_lib.ConfigError, storage.WorkdirError, *WEIGHTS_ERRORS) as e:
    _fail(str(e))
  except storage.WriteError as e:
    _exit_now(f'Error: {e}')
  except (CheckpointMismatchError, CheckpointDamagedError) as e:
    _exit_now(f'Error: {e}')
  except (DataError, FileNotFoundError, NonFiniteLossError) as e:
    _fail(str(e), code=1)
  except OSError as e:
    os_error = storage.write_os_error(e)
    if os_error is None:
      _fail(str(e), code=1)
    _exit_now(f'Error: cannot write {os_error.filename or workdir}: {storage.describe(os_error)}')
  except KeyboardInterrupt:
    _fail('interrupted (Ctrl-C); stopped without saving', code=130)
  except Exception as e:  # pylint: disable=broad-except
    lost = parallel.lost_peer(e)
    if lost is None:
      raise
    # At once: at a normal exit, JAX's shutdown barrier would wait for the lost process, then abort.
    _exit_now(f'Error: {lost}. Checkpoints are committed only once every process has written them: run the same '
              'command on every process to resume from the last one.')


def _simulate_devices(count: int) -> None:
  """Makes the CPU, split into `count` devices, JAX's only backend (--simulate_devices)."""
  if _MODE.value != 'summary':
    _fail(f'--simulate_devices only applies to --mode summary (--mode {_MODE.value} runs on this machine\'s devices)')
  if count < 1:
    _fail(f'--simulate_devices={count} must be at least 1')
  if _COORDINATOR.value or (_NUM_PROCESSES.value or 1) > 1:
    _fail('--simulate_devices runs in one process; leave out --coordinator_address and --num_processes')
  import jax
  try:
    jax.config.update('jax_platforms', 'cpu')
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError as e:  # a backend already started
    _fail(f'--simulate_devices: {e}')


def _exit_now(message: str) -> None:
  """Prints `message` and exits 1 at once: after a failed write, background checkpoint threads still running, and
  after a checkpoint that does not restore, the reads orbax abandoned (it does not cancel them), would print
  tracebacks at interpreter shutdown (the run's own cleanup, lock release included, has run)."""
  print(message, file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
