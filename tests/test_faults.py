"""Fault injection: damaged caches and checkpoints, interruptions and impossible settings end in the
right number or in one line, never in a silently wrong result."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import tiny
from gender_jax import evaluate
from gender_jax.data import batching
from gender_jax.data import face_dataset
from gender_jax.data import feature_cache
from gender_jax.data import input_cache
from gender_jax.data import protocol
from gender_jax.data import record_files
from gender_jax.faces import detect
from gender_jax.faces import inputs
from gender_jax.training import checkpoints
from gender_jax.training import run_dir
from gender_jax.training import train

REPO = pathlib.Path(__file__).resolve().parents[1]


def command(module, *args, before=None):
  """python -m module args, as a user runs it, after the Python `before` if given: (exit status,
  stdout, stderr)."""
  start = ['-m', module] if before is None else [
      '-c', f'{before}\nimport runpy\nrunpy.run_module({module!r}, run_name="__main__", '
      'alter_sys=True)']
  done = subprocess.run([sys.executable, *start, *map(str, args)], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  return done.returncode, done.stdout, done.stderr


def error_line(status, stderr):
  """The one `error:` line of a command that failed in one line, without a traceback."""
  assert status == 1 and 'Traceback' not in stderr, stderr
  (line,) = [l for l in stderr.splitlines() if l.startswith('error:')]
  return line


def tiny_config(data_dir, tmp_path, **overrides):
  config = tiny.get_config('custom')
  config.data_dir = str(data_dir)
  config.tfds_dir = str(tmp_path / 'tfds')
  config.update(overrides)
  return config


def _delete(path):
  os.remove(path)


def _truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _flip_bytes(path):
  """Changes bytes in the last quarter of the file: the rows, past any header."""
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.seek(size * 3 // 4)
    data = f.read(64)
    f.seek(size * 3 // 4)
    f.write(bytes(255 - b for b in data))


DAMAGES = {'deleted': _delete, 'truncated': _truncate, 'altered': _flip_bytes}


def _row_caches(root, prefix):
  return sorted(p for p in root.rglob(f'{prefix}*.npy') if not p.name.endswith('.rows.npy'))


@pytest.mark.parametrize('damage', DAMAGES)
def test_a_damaged_image_cache_is_made_again_never_read(synthetic_faces, tmp_path, damage):
  config = tiny_config(synthetic_faces, tmp_path)
  first = protocol.load_splits(config).splits
  caches = _row_caches(tmp_path / 'tfds', 'decoded-')
  assert len(caches) == 3  # One per split.
  for path in caches:
    DAMAGES[damage](path)
  again = protocol.load_splits(config).splits
  for name, split in first.items():
    np.testing.assert_array_equal(again[name].images[:], split.images[:])


def _split_with_records(tmp_path, count=12):
  base = str(tmp_path / 'decoded-train-x')
  rows = np.arange(0, count, 2)
  images = np.arange(count * 2 * 2 * 3, dtype=np.uint8).reshape(count, 2, 2, 3)[rows]
  return batching.Split(name='train', images=images, labels=np.zeros(len(rows), np.int32),
                        paths=[str(r) for r in rows], source_dir=str(tmp_path),
                        records=input_cache.Records(base, count, rows))


@pytest.mark.parametrize('damage', DAMAGES)
def test_damaged_features_are_encoded_again_never_read(tmp_path, damage):
  split = _split_with_records(tmp_path)
  encoded = []

  def encode(part, flip):
    encoded.append(len(part))
    return part.images[:].reshape(len(part), -1).astype(np.float32) + flip

  first = feature_cache.cached_features({'train': split}, 'key', False, encode)['train'][:]
  assert encoded == [len(split)]
  assert feature_cache.cached_features({'train': split}, 'key', False, encode)  # From the cache.
  assert encoded == [len(split)]
  (path,) = _row_caches(tmp_path, 'decoded-train-x.features')
  DAMAGES[damage](path)
  again = feature_cache.cached_features({'train': split}, 'key', False, encode)['train'][:]
  assert len(encoded) == 2 and encoded[1] > 0
  np.testing.assert_array_equal(again, first)


def test_a_cache_replaced_by_another_of_the_same_shape_is_not_trusted(tmp_path):
  base = str(tmp_path / 'c')
  cache = record_files.CheckedRows(base, 4, (3,), np.uint8)
  cache[np.arange(4)] = np.arange(12, dtype=np.uint8).reshape(4, 3)
  cache.commit()
  np.save(base + '.npy', np.zeros((4, 3), np.uint8))  # Another array, same shape and dtype.
  assert not record_files.CheckedRows(base, 4, (3,), np.uint8).filled(np.arange(4)).any()


@pytest.mark.parametrize('damage', ('truncated', 'altered', 'garbage'))
def test_damaged_landmarks_are_found_again_never_read(tmp_path, damage):
  path = tmp_path / 'landmarks.npz'
  marks = input_cache.Landmarks.empty(3)
  marks.found[:] = True
  np.savez(path, done=np.ones(3, bool), **marks._asdict())
  if damage == 'garbage':
    path.write_bytes(b'not a zip file')
  else:
    DAMAGES[damage](path)
  _, done = input_cache._saved_landmarks(str(path), 3)  # pylint: disable=protected-access
  assert not done.any()


@pytest.fixture(scope='module')
def finished(synthetic_faces, tmp_path_factory):
  """A finished tiny run and its own test evaluation (copied by the tests that change it)."""
  tmp = tmp_path_factory.mktemp('finished')
  train.train_and_evaluate(tiny_config(synthetic_faces, tmp), str(tmp / 'run'), command='pytest')
  return tmp, evaluate.evaluate(str(tmp / 'run'))


def _copy_run_and_dataset(finished, tmp_path):
  """A copy of the finished run whose config points at a copy of its dataset."""
  shutil.copytree(finished[0], tmp_path, dirs_exist_ok=True)
  config = json.loads((tmp_path / 'run' / 'config.json').read_text())
  config['tfds_dir'] = str(tmp_path / 'tfds')
  (tmp_path / 'run' / 'config.json').write_text(json.dumps(config))
  return tmp_path / 'run'


def test_evaluation_after_the_image_cache_was_deleted_gives_the_same_numbers(finished,
                                                                          tmp_path):
  # The user freed disk by deleting the largest files under the dataset's image cache.
  workdir = _copy_run_and_dataset(finished, tmp_path)
  for path in _row_caches(tmp_path / 'tfds', 'decoded-'):
    path.unlink()
  again = evaluate.evaluate(str(workdir))
  assert again['metrics'] == finished[1]['metrics']


# --- Checkpoints that verify themselves. ----------------------------------------------------

def _copy_run(finished, tmp_path):
  shutil.copytree(finished[0] / 'run', tmp_path / 'run')
  return tmp_path / 'run'


def _only(pattern, root):
  (found,) = root.glob(pattern)
  return found


def _values_changed(step_dir):
  """Bytes of the largest array file changed: orbax restores some such damage without a word."""
  largest = max((p for p in step_dir.rglob('d/*') if p.is_file()), key=lambda p: p.stat().st_size)
  _flip_bytes(largest)


BEST_DAMAGES = {
    'garbage metadata': lambda step: _only('variables/_METADATA', step).write_text('garbage{'),
    'corrupt data': lambda step: _flip_bytes(_only('variables/manifest.ocdbt', step)),
    'changed values': _values_changed,
}


@pytest.mark.parametrize('damage', BEST_DAMAGES)
def test_evaluate_on_a_damaged_best_checkpoint_says_what_and_what_to_do(finished, tmp_path,
                                                                       damage):
  workdir = _copy_run(finished, tmp_path)
  before = (workdir / 'eval_test.json').read_text()
  BEST_DAMAGES[damage](_only('checkpoints/best/*', workdir))
  status, _, stderr = command('gender_jax.evaluate', f'--workdir={workdir}')
  assert status == 1 and 'Traceback' not in stderr, stderr
  (line,) = [l for l in stderr.splitlines() if l.startswith('error:')]
  assert 'checkpoints/best/' in line and 'is damaged' in line and 'rerun the training' in line
  assert (workdir / 'eval_test.json').read_text() == before


def test_resuming_falls_back_to_the_epoch_before_a_damaged_last_one(finished, tmp_path, capsys):
  workdir = _copy_run(finished, tmp_path)
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints' / 'latest').iterdir())
  assert steps == [1, 2]  # Two kept.
  _only('train_state/_METADATA', workdir / 'checkpoints' / 'latest' / '2').write_text('garbage{')
  config = tiny.get_config('custom')
  config.update(json.loads((workdir / 'config.json').read_text()))
  config.num_epochs += 1
  results = train.train_and_evaluate(config, str(workdir))
  out = capsys.readouterr().out
  assert 'latest/2 is damaged' in out and 'Resuming from epoch 1' in out
  assert results['epochs_trained'] == 3
  epochs = [json.loads(l)['epoch'] for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert epochs == [1, 2, 3]  # Epoch 2 trained again from epoch 1's checkpoint.


def test_resuming_with_every_checkpoint_damaged_is_refused_in_one_line(finished, tmp_path):
  workdir = _copy_run(finished, tmp_path)
  for step in (workdir / 'checkpoints' / 'latest').iterdir():
    _values_changed(step)
  config = tiny.get_config('custom')
  config.update(json.loads((workdir / 'config.json').read_text()))
  config.num_epochs += 1
  with pytest.raises(checkpoints.DamagedCheckpointError, match='delete .*checkpoints'):
    train.train_and_evaluate(config, str(workdir))


# --- Every fault one line. -------------------------------------------------------------------

@pytest.mark.parametrize('value', ('nan', 'inf'))
def test_a_learning_rate_that_is_not_a_number_is_refused_before_any_work(tmp_path, value):
  status, _, stderr = command('gender_jax.main', '--config=configs/tiny.py',
                              f'--workdir={tmp_path / "run"}', f'--config.learning_rate={value}')
  assert status == 1 and 'Traceback' not in stderr
  assert f'config.learning_rate={value}: expected a finite number > 0' in stderr
  assert not (tmp_path / 'run').exists()


def test_ctrl_c_stops_a_command_in_one_line_with_status_130():
  code = ('import sys\nfrom gender_jax import cli\nsys.argv = ["x"]\n'
          'def main(argv):\n  raise KeyboardInterrupt\ncli.run(main)\n')
  done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO)
  assert done.returncode == 130 and 'Traceback' not in done.stderr
  assert 'stopped (Ctrl-C). Rerun the same command' in done.stderr


def test_more_epochs_under_a_cosine_schedule_are_refused_with_the_reason(finished, tmp_path):
  workdir = _copy_run(finished, tmp_path)
  config = tiny.get_config('custom')
  config.update(json.loads((workdir / 'config.json').read_text()))
  config.lr_schedule = 'cosine'
  (workdir / 'config.json').write_text(json.dumps(config.to_dict()))
  config.num_epochs += 1
  with pytest.raises(run_dir.ExperimentMismatchError,
                     match=r"num_epochs: 2 -> 3, under lr_schedule 'cosine'"):
    train.train_and_evaluate(config, str(workdir))


@pytest.mark.parametrize('record', ('config.json', 'results.json'))
def test_a_garbled_record_is_named_in_one_line(finished, tmp_path, record):
  workdir = _copy_run(finished, tmp_path)
  (workdir / record).write_text('{"model": "cus')
  status, _, stderr = command('gender_jax.evaluate', f'--workdir={workdir}')
  if record == 'results.json':  # evaluate reads the config and checkpoint, not the results.
    assert status == 0, stderr
    status, _, stderr = command('gender_jax.report', str(workdir))
  assert status == 1 and 'Traceback' not in stderr, stderr
  assert f'{workdir / record} is damaged' in stderr


def test_a_file_name_that_is_not_utf8_is_a_bad_file_with_the_reason(synthetic_faces, tmp_path):
  faces = tmp_path / 'faces'
  shutil.copytree(synthetic_faces, faces)
  source = next((faces / 'train' / 'male').iterdir())
  odd = os.path.join(os.fsencode(faces / 'train' / 'male'), b'caf\xe9.jpg')
  shutil.copyfile(source, odd)
  config = tiny_config(faces, tmp_path, max_bad_fraction=0.5)
  loaded = protocol.load_splits(config)
  assert len(loaded.splits['train']) == config.num_train
  report = next((tmp_path / 'tfds').rglob('bad_files.txt')).read_text()
  assert 'train/male/caf\\xe9.jpg\tfile name is not valid UTF-8: rename the file' in report


def test_predict_names_a_photo_whose_name_is_not_utf8(finished, synthetic_faces, tmp_path):
  photo = os.path.join(os.fsencode(tmp_path), b'caf\xe9.jpg')
  shutil.copyfile(next((synthetic_faces / 'test' / 'male').iterdir()), photo)
  status, stdout, stderr = command('gender_jax.predict', f'--workdir={finished[0] / "run"}',
                                   '--csv', tmp_path / 'out.csv', os.fsdecode(photo))
  assert status == 0 and 'Traceback' not in stderr, stderr
  assert 'caf\\xe9.jpg' in (tmp_path / 'out.csv').read_text()


def test_symbolic_link_loops_are_listed_but_do_not_count_as_undecodable(synthetic_faces, tmp_path):
  faces = tmp_path / 'faces'
  shutil.copytree(synthetic_faces, faces)
  for i in range(3):  # 3 of 91 files: over the default max_bad_fraction of 1%.
    os.symlink(f'loop{i}.jpg', faces / 'train' / 'female' / f'loop{i}.jpg')
  config = tiny_config(faces, tmp_path)
  assert config.max_bad_fraction == 0.01
  protocol.load_splits(config)
  report = next((tmp_path / 'tfds').rglob('bad_files.txt')).read_text()
  assert report.count('symbolic link loop') == 3
  assert len(protocol.load_folder(faces / 'train', inputs.FaceInput.from_config(config))) == 48


def test_evaluate_during_the_first_epoch_says_the_run_is_still_training(finished, tmp_path):
  workdir = _copy_run(finished, tmp_path)
  shutil.rmtree(workdir / 'checkpoints' / 'best')
  (workdir / 'checkpoints' / 'best').mkdir()
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from gender_jax.training import run_dir\n'
       'with run_dir.lock(sys.argv[1], "python -m gender_jax.main ..."):\n'
       '  print("held", flush=True); time.sleep(60)', str(workdir)],
      cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    status, _, stderr = command('gender_jax.evaluate', f'--workdir={workdir}')
  finally:
    holder.kill()
    holder.wait()
  assert status == 1 and 'Traceback' not in stderr
  assert f'is still training (process {holder.pid} since' in stderr
  assert 'Rerun its training command' not in stderr


def test_evaluate_shows_the_numbers_even_where_it_cannot_save_them(finished, tmp_path):
  workdir = _copy_run(finished, tmp_path)
  (workdir / 'eval_test.json').unlink()
  (workdir / 'eval_test.json').mkdir()  # Cannot be written, even by root (as a read-only run).
  status, stdout, stderr = command('gender_jax.evaluate', f'--workdir={workdir}')
  assert status == 1 and 'Traceback' not in stderr, stderr
  assert 'accuracy' in stdout and 'best epoch' in stdout
  assert 'error: the numbers above are not saved: Is a directory' in stderr


def test_a_run_trained_on_relative_paths_is_evaluated_from_anywhere(synthetic_faces, tmp_path,
                                                                    monkeypatch):
  shutil.copytree(synthetic_faces, tmp_path / 'faces')
  monkeypatch.chdir(tmp_path)
  config = tiny.get_config('custom')
  config.update(data_dir='faces', tfds_dir='tfds')
  train.train_and_evaluate(config, 'run')
  recorded = json.loads((tmp_path / 'run' / 'config.json').read_text())
  assert recorded['data_dir'] == str(tmp_path / 'faces') and config.data_dir == 'faces'
  train.train_and_evaluate(config, 'run')  # The same command again: the same experiment.
  status, stdout, stderr = command('gender_jax.evaluate', f'--workdir={tmp_path / "run"}')
  assert status == 0, stderr  # Run from the repository, not from where it trained.
  assert 'best epoch' in stdout


def test_a_finished_run_without_its_config_json_is_still_evaluated(finished, tmp_path):
  workdir = _copy_run(finished, tmp_path)
  (workdir / 'config.json').unlink()
  status, stdout, stderr = command('gender_jax.evaluate', f'--workdir={workdir}')
  assert status == 0, stderr  # results.json holds the same config.
  assert json.loads((workdir / 'eval_test.json').read_text())['metrics'] == finished[1]['metrics']


# --- A full disk: one line naming the file, and the rerun goes on. ---------------------------

DISK_FULL = ('import errno, os\n'
             'def disk_full(*args, **kwargs):\n'
             '  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n')


def test_a_full_disk_while_caching_images_is_one_line_and_changes_no_result(finished, tmp_path):
  workdir = _copy_run_and_dataset(finished, tmp_path)
  before = (workdir / 'eval_test.json').read_text()
  for path in _row_caches(tmp_path / 'tfds', 'decoded-'):
    path.unlink()
  status, _, stderr = command('gender_jax.evaluate', f'--workdir={workdir}',
                              before=DISK_FULL + 'os.pwrite = disk_full')  # Rows are pwritten.
  line = error_line(status, stderr)
  assert re.search(r'The disk is full: cannot write \S+/decoded-test-\S+\.npy \([\d.]+ \w?B free '
                   r'there; about 49\.2 kB needed\)', line), line
  assert 'config.tfds_dir (--config.tfds_dir) at another disk' in line
  assert (workdir / 'eval_test.json').read_text() == before
  assert evaluate.evaluate(str(workdir))['metrics'] == finished[1]['metrics']  # Once it fits.


# Orbax writes a checkpoint's metadata through etils' Path.write_text, in its own threads.
_CHECKPOINT_METADATA_FULL = (
    'from etils.epath import abstract_path\n'
    'write_text = abstract_path.Path.write_text\n'
    'def write_unless_a_checkpoint(path, *args, **kwargs):\n'
    '  if "/checkpoints/" in os.fspath(path):\n'
    '    disk_full()\n'
    '  return write_text(path, *args, **kwargs)\n'
    'abstract_path.Path.write_text = write_unless_a_checkpoint\n')


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_saved_epochs(
    finished, tmp_path):
  workdir = _copy_run(finished, tmp_path)
  results = (workdir / 'results.json').read_text()
  save = ('import sys\nimport numpy as np\nfrom gender_jax import cli\n'
          'from gender_jax.training import checkpoints\n'
          'def main(argv):\n'
          '  state = {"w": np.ones((64, 64), np.float32)}\n'
          '  checkpoints.Checkpoints(argv[1]).save_latest(3, state, {"epoch": 3})\n'
          'cli.run(main)\n')  # What training does after epoch 3, without training.
  done = subprocess.run([sys.executable, '-c', DISK_FULL + _CHECKPOINT_METADATA_FULL + save,
                         str(workdir)], capture_output=True, text=True, cwd=REPO, timeout=300)
  line = error_line(done.returncode, done.stderr)
  assert re.fullmatch(
      rf'error: The disk is full: cannot write {re.escape(str(workdir))}/checkpoints/latest/3 '
      r'\([\d.]+ \w?B free there; about 16\.4 kB needed\)\. Free some space there and rerun the '
      r'same command: it resumes from the last saved epoch \(or train into a --workdir on another '
      r'disk, from the start\)\.', line), line
  assert (workdir / 'results.json').read_text() == results
  # What the rerun resumes from once there is room: epoch 2, whole and sealed.
  latest = workdir / 'checkpoints' / 'latest'
  assert sorted(p.name for p in latest.glob('[0-9]')) == ['1', '2']
  assert not checkpoints._unsealed(str(latest / '2'))  # pylint: disable=protected-access


def test_a_full_disk_said_inside_another_librarys_error_is_one_line():
  # TFDS's ArrayRecord writer and orbax's tensorstore say it in words; orbax's event loop, closed
  # by a failed save, reports its pending writes as unraisable.
  code = ('import sys\nfrom gender_jax import cli\nsys.argv = ["x"]\n'
          'class PendingWrite:\n'
          '  def __del__(self):\n'
          '    raise RuntimeError("Event loop is closed")\n'
          'def main(argv):\n'
          '  PendingWrite()\n'
          '  raise ValueError("RESOURCE_EXHAUSTED: Failed writing: No space left on device")\n'
          'cli.run(main)\n')
  done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO)
  assert error_line(done.returncode, done.stderr).startswith(
      'error: The disk is full. Free some space on it and rerun the same command;')
  assert done.stderr.strip().count('\n') == 0, done.stderr


# --- Face finding costs what was asked. ------------------------------------------------------

class CountingDetector:
  """Finds no face; records how many images each call was given."""
  id = 'counting'

  def __init__(self):
    self.calls = []

  def detect(self, images):
    self.calls.append(len(images))
    return [detect.no_faces() for _ in images]


def test_faces_are_found_in_the_images_asked_for_each_alone(synthetic_faces, tmp_path):
  builder = face_dataset.build(synthetic_faces, tmp_path / 'tfds')
  detector = CountingDetector()
  input_cache.cached_landmarks(builder, 'train', np.array([3, 17, 40]), detector, detector.id)
  assert sum(detector.calls) == 3  # Of the split's 48 records.
  input_cache.cached_landmarks(builder, 'train', np.array([3, 5]), detector, detector.id)
  assert sum(detector.calls) == 4  # Record 3's faces were found before.
  # Each alone: batched detection rounds differently with other images in the batch.
  assert set(detector.calls) == {1}
