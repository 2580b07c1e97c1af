"""Test session setup: 8 simulated CPU devices, so data-parallel code runs sharded exactly as on 8 accelerators,
and a compilation cache shared by the tests (many build the same tiny model)."""
import os
import sys
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  (after XLA_FLAGS)
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # no absl app runs the tests; grain's worker processes read its flags

jax.config.update('jax_compilation_cache_dir', os.path.join(tempfile.gettempdir(), 'ctxseg_jax_test_xla_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
