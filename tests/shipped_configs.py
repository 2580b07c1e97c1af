"""The config files under configs/, for tests that check every shipped config."""
import glob
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def load(path: str):
  """get_config() of the config file at `path` (relative to the repository root), or get_config(arg) for
  'file.py:arg', as --config passes it."""
  path, _, arg = path.partition(':')
  spec = importlib.util.spec_from_file_location('config_under_test', os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
