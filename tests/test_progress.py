"""The training loop's bookkeeping: window means, throughput over timed steps only, the non-finite stop."""
import jax.numpy as jnp
import pytest

from ctxseg_jax.progress import NonFiniteLossError, ProgressWindow


def test_summary_averages_the_window_and_times_only_timed_steps():
  window = ProgressWindow(lambda: 'unused')
  window.add(1, {'loss': jnp.float32(3.0)}, timed=False)  # the step that compiled
  window.restart_clock()
  window.add(2, {'loss': jnp.float32(2.0)})
  window.add(3, {'loss': jnp.float32(1.0)})
  means, images_per_s, eta = window.summary(batch_size=4, steps_left=10)
  assert means == {'loss': 2.0}
  assert images_per_s > 0 and eta == pytest.approx(10 * 4 / images_per_s, rel=1e-6)  # 10 steps of 4 images
  window.add(4, {'loss': jnp.float32(5.0)})  # a new window
  assert window.summary(batch_size=4, steps_left=9)[0] == {'loss': 5.0}


def test_first_non_finite_step_is_named_with_where_the_last_good_checkpoint_is():
  window = ProgressWindow(lambda: 'the last good checkpoint is step 2 in /ckpt')
  window.add(3, {'loss': jnp.float32(1.0)})
  window.add(4, {'loss': jnp.float32(jnp.nan), 'loss_aux': jnp.float32(0.5)})
  window.add(5, {'loss': jnp.float32(jnp.inf)})
  with pytest.raises(NonFiniteLossError, match=r'non-finite loss at step 4 \(loss=nan, loss_aux=0.5\)\. Stopped '
                                               r'without saving; the last good checkpoint is step 2 in /ckpt'):
    window.fetch()
