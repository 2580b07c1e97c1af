"""bench/train_step.py's arithmetic: the machine's ceiling on torch_eager / ctxseg_jax."""
from bench import train_step


def test_ceiling_is_torch_time_over_the_steps_flops_at_the_best_matmul_rate():
  rows = [{'model': 'fcn_r50', 'impl': 'ctxseg_jax', 'shape': [2, 256, 256], 'flops': 400e9, 'median_s': 4.0,
           'gflops': 100.0},
          {'model': 'fcn_r50', 'impl': 'torch_eager', 'shape': [2, 256, 256], 'flops': 400e9, 'median_s': 2.5,
           'gflops': 160.0}]
  text = train_step.ceiling(rows, {'ctxseg_jax': 180.0, 'torch_eager': 200.0})
  lines = text.splitlines()
  assert lines[0] == '4096^3 float32 matmul: ctxseg_jax 180.0, torch_eager 200.0 GFLOP/s'
  # 400 GFLOP at the better rate, 200 GFLOP/s: 2 s; torch's 2.5 s is 80 % of that rate and 1.25x that floor.
  assert lines[1] == ('fcn_r50@256: the step\'s FLOPs at 200.0 GFLOP/s take 2.000 s; torch_eager runs at 80% of '
                      'that, so torch_eager / ctxseg_jax is at most 1.25x')
  assert len(lines) == 2
