"""What is wrong with a config file, as one line naming the file (and the line, the key): for the command line's
errors, which config_flags would otherwise report as tracebacks or as a dump of the whole config."""
from __future__ import annotations

import difflib
import importlib.machinery
import os
import re
import traceback
import types

import ml_collections


def config_argument(argv: list[str]) -> str | None:
  """The value of --config in `argv` ('path' or 'path:arg'), or None."""
  for i, arg in enumerate(argv[1:], 1):
    if arg in ('--config', '-config'):
      return argv[i + 1] if i + 1 < len(argv) else None
    if arg.startswith(('--config=', '-config=')):
      return arg.split('=', 1)[1]
  return None


def file_problem(spec: str) -> str | None:
  """Loads the config file `spec` ('path[:arg]') alone, as config_flags does but without the overrides; returns
  what is wrong with it as one line naming the file (and the line, the key), or None when it loads."""
  path, *args = spec.split(':')
  if not os.path.exists(path):
    return f'config file {path} does not exist'
  if not os.path.isfile(path):
    return f'config file {path} is not a file'
  loader = importlib.machinery.SourceFileLoader('_ctxseg_config_check', path)
  module = types.ModuleType(loader.name)
  module.__file__ = path
  try:
    loader.exec_module(module)
  except SyntaxError as e:
    return f'config file {path}:{e.lineno}: syntax error: {e.msg}'
  except Exception as e:  # pylint: disable=broad-except
    return f'config file {_where(path, e)}: importing it raised {_describe(e)}'
  get_config = getattr(module, 'get_config', None)
  if not callable(get_config):
    return f'config file {path} has no get_config() function (it returns the run\'s ConfigDict)'
  call = f'get_config({", ".join(map(repr, args))})'
  try:
    config = get_config(*args)
  except Exception as e:  # pylint: disable=broad-except
    described = _describe(e)
    verb = 'sets an' if described.startswith('unknown config key') else 'raised'
    return f'config file {_where(path, e)}: {call} {verb} {described}'
  return schema_problem(config, path, call)


def schema_problem(config, path: str, call: str = 'get_config()') -> str | None:
  """What makes `config` (returned by the file's get_config) not a config of this trainer, or None."""
  if not isinstance(config, ml_collections.ConfigDict):
    return (f'config file {path}: {call} returned {type(config).__name__}, not an ml_collections.ConfigDict '
            '(start from ctxseg_jax.config.base_config() and return it)')
  from ctxseg_jax import config as config_lib
  schema = config_lib.base_config()
  unknown = [key for key in config if key not in schema]
  if unknown:
    hints = [difflib.get_close_matches(key, list(schema), n=1) for key in unknown]
    hint = ''.join(f' (did you mean {h[0]!r} instead of {k!r}?)' for k, h in zip(unknown, hints) if h)
    return f'config file {path}: unknown top-level config key(s) {unknown}{hint}; valid keys: {list(schema)}'
  missing = [key for key in schema if key not in config]
  if missing:
    return (f'config file {path}: {call} returned a config without {missing} (start from '
            'ctxseg_jax.config.base_config())')
  return None


def _where(path: str, error: BaseException) -> str:
  """'path:line (`code`)' of the innermost frame of `error`'s traceback inside the file `path`, else 'path'."""
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if os.path.exists(f.filename) and os.path.samefile(f.filename, path)]
  if not frames:
    return path
  return f'{path}:{frames[-1].lineno}' + (f' (`{frames[-1].line}`)' if frames[-1].line else '')


def _describe(error: BaseException) -> str:
  """One line for an exception; a locked ConfigDict's unknown key as just the key and the closest valid one."""
  text = str(error.args[0]) if error.args else str(error)
  missing_key = re.search(r'Key "([^"]+)" does not exist', text)
  if missing_key:
    hint = re.search(r'Did you mean "([^"]+)"', text)
    return f'unknown config key {missing_key.group(1)!r}' + (f' (did you mean {hint.group(1)!r}?)' if hint else '')
  first_line = text.strip().splitlines()[0] if text.strip() else ''
  return f'{type(error).__name__}: {first_line}' if first_line else type(error).__name__
