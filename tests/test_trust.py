"""Runs you can trust: one experiment per workdir, one run at a time, honest records, and one
line of error (never a traceback) for each mistake a user can make."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from configs import tiny
from gender_jax import cli
from gender_jax import config_check
from gender_jax import evaluate
from gender_jax.report import document
from gender_jax.training import run_dir
from gender_jax.training import train

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / 'configs' / 'tiny.py')


def tiny_config(data_dir, tmp_path, **overrides):
  config = tiny.get_config('custom')
  config.data_dir = str(data_dir)
  config.tfds_dir = str(tmp_path / 'tfds')
  config.update(overrides)
  return config


def command(module, *args, cwd=REPO):
  """python -m module args, as a user runs it (on conftest's 4 fake devices): (exit status,
  stdout, stderr)."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(REPO)}
  done = subprocess.run([sys.executable, '-m', module, *map(str, args)], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)
  return done.returncode, done.stdout, done.stderr


def assert_one_line_error(result, *fragments):
  status, _, stderr = result
  lines = stderr.strip().splitlines()
  assert status != 0 and 'Traceback' not in stderr, stderr[-2000:]
  assert lines[-1].startswith('error: '), stderr[-2000:]
  for fragment in fragments:
    assert fragment in lines[-1], lines[-1]


@pytest.fixture(scope='module')
def finished(synthetic_faces, tmp_path_factory):
  """A finished tiny run (copied by the tests that change it)."""
  tmp = tmp_path_factory.mktemp('finished')
  config = tiny_config(synthetic_faces, tmp)
  train.train_and_evaluate(config, str(tmp / 'run'), command='pytest')
  return tmp / 'run', config


def copy_of(finished, tmp_path):
  workdir, config = finished
  shutil.copytree(workdir, tmp_path / 'run')
  return tmp_path / 'run', config.copy_and_resolve_references()


# --- 1. The config is checked before any work, in one place. -------------------------------

@pytest.mark.parametrize('field, value, accepted', [
    ('model', 'resnet', "one of 'custom', 'vgg16', 'vggface'"),
    ('optimizer', 'adagrad', "one of 'adam', 'sgd'"),
    ('resize', 'squash', "one of 'stretch', 'center_crop'"),
    ('image_size', 2, '>= 4: custom halves the image 2 times'),
    ('batch_size', 6, 'a multiple of the 4 devices'),
    ('num_train', -2, 'or -1 for all'),
    ('learning_rate', 0.0, '> 0'),
    ('dropout_rate', 1.5, '<= 1'),
    ('augment_scale', 0.4, '<= 0.3'),
    ('augment_aspect', 1.0, '<= 0.3: with augment_scale=0.0 the width would shrink to 0'),
    ('weights', 'weights/imagenet', 'the custom model trains from scratch'),
])
def test_each_bad_field_is_one_line_naming_field_value_and_what_is_accepted(
    field, value, accepted):
  config = tiny.get_config('custom')
  config[field] = value
  problems = config_check.problems(config, num_devices=4)
  assert len(problems) == 1
  assert problems[0].startswith(f'config.{field}={value!r}: expected ') and accepted in problems[0]


def test_every_shipped_config_passes_the_check():
  from configs import custom, default, face_resnet, vgg16, vggface  # pylint: disable=g-import-not-at-top
  for config in (default.get_config(), custom.get_config(), vgg16.get_config(),
                 vggface.get_config(), face_resnet.get_config(), tiny.get_config('custom'),
                 tiny.get_config('vggface'), tiny.get_config('face_resnet')):
    assert config_check.problems(config, num_devices=4) == []


@pytest.mark.parametrize('field, value, accepted', [
    ('face_resnet_features', 'logits', "one of 'descriptor', 'pooled'"),
    ('image_size', 70, '>= 71: face_resnet halves the image 6 times by unpadded layers'),
    ('finetune_blocks', ('block5',), 'block names among conv32, conv64, conv128, conv256, fc'),
])
def test_face_resnet_fields_are_checked_against_its_own_network(field, value, accepted):
  config = tiny.get_config('face_resnet')
  config[field] = value
  problems = config_check.problems(config, num_devices=4)
  assert len(problems) == 1 and accepted in problems[0], problems


def test_a_bad_config_fails_before_any_data_is_read(tmp_path):
  config = tiny_config(tmp_path / 'no_such_folder', tmp_path, optimizer='adagrad')
  with pytest.raises(config_check.ConfigError, match="optimizer='adagrad'"):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'tfds').exists() and not (tmp_path / 'run').exists()


@pytest.mark.parametrize('flag, fragments', [
    ('--config.lerning_rate=0.1', ('--config.lerning_rate', "no field 'lerning_rate'",
                                   'learning_rate')),
    ('--config.model=resnet', ("config.model='resnet'",)),
    ('--config.batch_size=6', ('config.batch_size=6', 'multiple of the 4 devices')),
    ('--config.image_size=2', ('config.image_size=2', '>= 4')),
])
def test_command_line_config_mistakes_are_one_line(flag, fragments, synthetic_faces, tmp_path):
  result = command('gender_jax.main', f'--config={TINY}', f'--workdir={tmp_path / "run"}',
                   f'--config.data_dir={synthetic_faces}', f'--config.tfds_dir={tmp_path}', flag)
  assert_one_line_error(result, *fragments)


# --- 2. A workdir belongs to one experiment. ---------------------------------------------------

def test_a_changed_config_is_refused_listing_each_field(finished, tmp_path):
  workdir, config = copy_of(finished, tmp_path)
  before = {p: p.read_bytes() for p in workdir.glob('*.json*')}
  config.image_size, config.learning_rate = 36, 1e-2
  with pytest.raises(run_dir.ExperimentMismatchError) as error:
    train.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  assert 'image_size: 32 -> 36' in message and 'learning_rate: 0.001 -> 0.01' in message
  assert 'config.json' in message and 'new --workdir' in message
  assert {p: p.read_bytes() for p in workdir.glob('*.json*')} == before


def test_fields_that_do_not_change_results_may_differ(finished, tmp_path):
  workdir, config = copy_of(finished, tmp_path)
  config.eval_batch_size = 4
  train.train_and_evaluate(config, str(workdir))  # Finished: nothing to do, nothing refused.


def test_raising_num_epochs_continues_and_lowering_it_is_refused(finished, tmp_path):
  workdir, config = copy_of(finished, tmp_path)
  config.num_epochs += 1
  results = train.train_and_evaluate(config, str(workdir))
  assert results['epochs_trained'] == results['num_epochs'] == 3
  assert [e['epoch'] for e in run_dir.read_metrics(workdir)] == [1, 2, 3]
  config.num_epochs = 2
  with pytest.raises(run_dir.ExperimentMismatchError, match='num_epochs: 3 -> 2'):
    train.train_and_evaluate(config, str(workdir))


def test_a_deleted_train_list_is_refused_not_redrawn(finished, tmp_path):
  workdir, config = copy_of(finished, tmp_path)
  (workdir / 'results.json').unlink()  # Unfinished, so it would train on.
  (workdir / 'protocol' / 'train.txt').unlink()
  with pytest.raises(run_dir.ExperimentMismatchError, match='train.txt is missing'):
    train.train_and_evaluate(config, str(workdir))


def test_rerunning_a_finished_run_leaves_its_results_untouched(finished, tmp_path, capsys):
  workdir, config = copy_of(finished, tmp_path)
  files = {p: p.stat().st_mtime_ns for p in workdir.iterdir()
           if p.is_file() and p.name != run_dir.LOCK}
  results = train.train_and_evaluate(config, str(workdir))
  assert results == json.loads((workdir / 'results.json').read_text())
  assert {p: p.stat().st_mtime_ns for p in files} == files
  assert f'its results are in {workdir / "results.json"}' in capsys.readouterr().out


# --- 3. One run per workdir at a time. ------------------------------------------------------

def test_a_second_run_in_a_busy_workdir_is_refused_naming_the_first(finished, tmp_path):
  workdir, config = copy_of(finished, tmp_path)
  config.num_epochs += 1
  with run_dir.lock(str(workdir), 'python -m gender_jax.main --first'):
    with pytest.raises(run_dir.RunInUseError,
                       match=f'process {os.getpid()} since .*--first'):
      train.train_and_evaluate(config, str(workdir))
  assert json.loads((workdir / 'results.json').read_text())['epochs_trained'] == 2


def test_a_killed_run_does_not_leave_the_workdir_locked(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from gender_jax.training import run_dir\n'
       'with run_dir.lock(sys.argv[1], "holder"):\n  print("held", flush=True); time.sleep(60)',
       str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True,
      env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert holder.stdout.readline().strip() == 'held'
  with pytest.raises(run_dir.RunInUseError, match=f'process {holder.pid}'):
    with run_dir.lock(str(tmp_path), 'second'):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with run_dir.lock(str(tmp_path), 'after the kill'):
    pass


# --- 4. Honest records. --------------------------------------------------------------------

def test_results_say_what_was_trained_over_every_resume(finished, tmp_path):
  workdir, config = copy_of(finished, tmp_path)
  first = json.loads((workdir / 'results.json').read_text())
  assert first['version'] == run_dir.RESULTS_VERSION and first['epochs_trained'] == 2
  assert first['command'] == 'pytest' and os.path.isabs(first['data_dir'])
  config.num_epochs += 1
  time.sleep(0.01)
  resumed = train.train_and_evaluate(config, str(workdir))
  assert resumed['total_seconds'] > first['total_seconds']  # Summed, not this session's.
  assert resumed['train_seconds'] > first['train_seconds']


def test_the_command_is_recorded_as_typed(synthetic_faces, tmp_path):
  status, _, stderr = command('gender_jax.main', f'--config={TINY}', f'--workdir={tmp_path / "r"}',
                              f'--config.data_dir={synthetic_faces}',
                              f'--config.tfds_dir={tmp_path}', '--config.num_epochs=1')
  assert status == 0, stderr[-2000:]
  recorded = json.loads((tmp_path / 'r' / 'results.json').read_text())['command']
  assert recorded.startswith('python -m gender_jax.main --config=')


def test_evaluating_another_folder_never_overwrites_the_runs_own(finished, tmp_path,
                                                                synthetic_faces):
  workdir, _ = copy_of(finished, tmp_path)
  own = evaluate.evaluate(str(workdir), split='test')
  saved = (workdir / 'eval_test.json').read_text()
  other = evaluate.evaluate(str(workdir), folder=str(synthetic_faces / 'test'))
  assert (workdir / 'eval_test.json').read_text() == saved
  assert json.loads((workdir / 'eval_folder_test.json').read_text()) == json.loads(
      json.dumps(other))
  assert own['evaluated'] == 'test'


def test_the_report_lists_unfinished_runs_as_unfinished(finished, tmp_path):
  workdir, config = copy_of(finished, tmp_path)
  (workdir / 'results.json').unlink()
  study = tmp_path / 'study'
  study.mkdir()
  shutil.move(workdir, study / 'custom')
  shutil.copytree(finished[0], study / 'done')
  text = document.write_report([study], tmp_path / 'out', saliency_per_kind=0).read_text()
  assert '| custom |  | unfinished (epoch 2 of 2) |' in text
  assert '| done | custom | 16 |' in text


# --- 5. Every command line: one line for a mistake or an environment fault. ----------------

def test_evaluate_on_a_missing_workdir(tmp_path):
  assert_one_line_error(command('gender_jax.evaluate', f'--workdir={tmp_path / "none"}'),
                        'holds no trained run', 'python -m gender_jax.main')


def test_report_on_a_folder_without_runs(tmp_path):
  assert_one_line_error(command('gender_jax.report', tmp_path), 'No run directories')


def test_predict_to_an_unwritable_csv_fails_before_predicting(finished, tmp_path,
                                                             synthetic_faces):
  (tmp_path / 'file').write_text('')
  result = command('gender_jax.predict', f'--workdir={finished[0]}',
                   f'--csv={tmp_path / "file" / "out.csv"}', synthetic_faces / 'test')
  assert_one_line_error(result, 'cannot write --csv')


def test_a_workdir_that_cannot_be_made_is_one_line(synthetic_faces, tmp_path):
  (tmp_path / 'file').write_text('')
  result = command('gender_jax.main', f'--config={TINY}', f'--workdir={tmp_path / "file" / "r"}',
                   f'--config.data_dir={synthetic_faces}', f'--config.tfds_dir={tmp_path}')
  assert_one_line_error(result, 'Not a directory', str(tmp_path / 'file'))


def test_study_of_an_unknown_model(tmp_path):
  status, _, stderr = command('gender_jax.study', f'--workdir={tmp_path}', '--models=resnet')
  assert status != 0 and 'Traceback' not in stderr and "Unknown models ['resnet']" in stderr


def test_data_tool_asking_for_more_images_than_the_folder_holds(synthetic_faces, tmp_path):
  result = command('gender_jax.data', '--config=configs/default.py',
                   f'--config.data_dir={synthetic_faces}', f'--config.tfds_dir={tmp_path}',
                   '--config.num_train=1000')
  assert_one_line_error(result, 'Asked for 1000 train images but the folder has 48')


def test_environment_faults_are_named_in_words():
  full = OSError(28, 'No space left on device', '/runs/x/metrics.jsonl')
  assert cli.environment_fault(full).startswith(
      'The disk is full: cannot write /runs/x/metrics.jsonl (')
  assert cli.environment_fault(OSError(5, 'Input/output error')) is None  # A fault to show whole.
  assert cli.environment_fault(ValueError('bug')) is None


def test_commands_keep_compiled_programs_in_the_users_cache_unless_told_otherwise(tmp_path):
  assert cli.compilation_cache_settings({'XDG_CACHE_HOME': str(tmp_path / 'c')}) == {
      'jax_compilation_cache_dir': str(tmp_path / 'c' / 'gender_jax' / 'jax'),
      'jax_persistent_cache_min_compile_time_secs': 0.0,
      'jax_compilation_cache_max_size': 1 << 30}
  assert 'jax_compilation_cache_dir' not in cli.compilation_cache_settings(
      {'JAX_COMPILATION_CACHE_DIR': '/mine'})  # JAX reads the user's own setting itself.
  (tmp_path / 'a_file').write_text('')  # A cache folder that cannot be made: no cache.
  assert cli.compilation_cache_settings({'XDG_CACHE_HOME': str(tmp_path / 'a_file')}) == {}
  jit_once = ('from gender_jax import cli\nimport jax, jax.numpy as jnp\ndef main(argv):\n'
              '  jax.jit(lambda x: x * 3 + 1)(jnp.ones(2)).block_until_ready()\ncli.run(main)')
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_COMPILATION_CACHE')}
  subprocess.run([sys.executable, '-c', jit_once], cwd=REPO, check=True, timeout=120,
                 env={**env, 'XDG_CACHE_HOME': str(tmp_path), 'JAX_PLATFORMS': 'cpu'})
  assert list((tmp_path / 'gender_jax' / 'jax').iterdir())


# --- 8. Quiet by default. --------------------------------------------------------------------

def test_a_run_prints_its_summary_epochs_and_test_line_only(synthetic_faces, tmp_path):
  status, stdout, stderr = command(
      'gender_jax.main', f'--config={TINY}', f'--workdir={tmp_path / "r"}',
      f'--config.data_dir={synthetic_faces}', f'--config.tfds_dir={tmp_path}')
  assert status == 0, stderr[-2000:]
  lines = [l for l in (stdout + stderr).splitlines() if l.strip() and '%|' not in l]  # No bars.
  assert len(lines) <= 25, '\n'.join(lines)
  assert any(l.startswith('epoch 2/2: train loss ') for l in lines)
  assert any(l.startswith('test (best epoch ') for l in lines)
  assert not any('checkpoint' in l.lower() for l in lines), '\n'.join(lines)
