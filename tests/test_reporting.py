"""metrics.jsonl: records survive resume trimming, and object stores are not rewritten on every record."""
from etils import epath

from ctxseg_jax import reporting, storage


def test_records_are_appended_and_trimmed_on_resume(tmp_path):
  writer = reporting.MetricWriter(tmp_path)
  for step in (1, 2, 3):
    writer.write(step, 'train', {'loss': float(step)})
  writer.close()
  assert [r['step'] for r in reporting.read_metrics(tmp_path)] == [1, 2, 3]
  writer = reporting.MetricWriter(tmp_path, resume_step=2)
  writer.write(3, 'train', {'loss': 30.0})
  writer.close()
  assert [(r['step'], r['loss']) for r in reporting.read_metrics(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_rewriting_stores_batch_train_records_and_flush_evals_flushes_and_close(tmp_path, monkeypatch):
  rewrites = []
  original = storage.write_atomic

  def counting_write_atomic(path, data):
    if epath.Path(path).name == reporting.METRICS_FILE:
      rewrites.append(data.count('\n'))
    return original(path, data)

  monkeypatch.setattr(storage, 'write_atomic', counting_write_atomic)
  writer = reporting.MetricWriter(tmp_path, rewrite=True, rewrite_every_s=3600)
  for step in range(1, 101):
    writer.write(step, 'train', {'loss': 1.0})
  assert rewrites == []  # 100 train records, no rewrite yet
  writer.write(100, 'eval', {'miou': 50.0})
  assert rewrites == [101]  # an eval record is written at once, with everything before it
  writer.write(101, 'train', {'loss': 1.0})
  writer.flush()  # the trainer's, at each checkpoint
  assert rewrites == [101, 102]
  writer.flush()
  writer.write(102, 'train', {'loss': 1.0})
  writer.close()
  assert rewrites == [101, 102, 103]  # nothing new, nothing rewritten
  records = reporting.read_metrics(tmp_path)
  assert len(records) == 103 and records[100] == {'step': 100, 'split': 'eval', 'miou': 50.0}
