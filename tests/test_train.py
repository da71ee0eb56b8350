"""Training and evaluation end to end on the tiny config and a synthetic face folder."""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import tiny
from gender_jax import evaluate
from gender_jax.data import batching
from gender_jax.models import face_resnet
from gender_jax.models import networks
from gender_jax.models import pretrained
from gender_jax.models import weights_folder
from gender_jax.training import checkpoints
from gender_jax.training import run_dir
from gender_jax.training import sharded
from gender_jax.training import train
from gender_jax.training import trained_run
from weights_convert import convert

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(model, data_dir, tmp_path, **overrides):
  config = tiny.get_config(model)
  config.data_dir = str(data_dir)
  config.tfds_dir = str(tmp_path / 'tfds')
  if model != 'custom':
    config.allow_random_base = True
  config.update(overrides)
  return config


def restore_latest(workdir):
  """The params of the latest checkpoint of a run, as numpy on this process's first device."""
  trained = trained_run.load_trained(workdir)  # For the run's model and config.
  abstract = jax.eval_shape(lambda: train.create_train_state(
      trained.config, trained.model, jax.random.PRNGKey(0), steps_per_epoch=1))
  state, _ = checkpoints.Checkpoints(workdir).restore_latest(
      abstract, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  return jax.device_get(state.params)


def run_main(workdir, config_arg, overrides, devices=4, timeout=600, wait=True, flags=()):
  """`python -m gender_jax.main` in a subprocess with a given number of fake devices."""
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
         'JAX_PLATFORMS': 'cpu'}
  command = [sys.executable, '-m', 'gender_jax.main', f'--config={config_arg}',
             f'--workdir={workdir}', *flags] + [f'--config.{k}={v}' for k, v in overrides.items()]
  if not wait:
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)
  assert done.returncode == 0, done.stderr[-3000:]
  return done


@pytest.fixture(scope='module')
def custom_run(synthetic_faces, tmp_path_factory):
  """One finished tiny custom run, shared by the tests that only read it."""
  tmp = tmp_path_factory.mktemp('custom_run')
  config = tiny_config('custom', synthetic_faces, tmp)
  results = train.train_and_evaluate(config, str(tmp / 'run'))
  return tmp / 'run', config, results


def test_custom_run_writes_every_output(custom_run):
  workdir, config, results = custom_run
  for name in ('config.json', 'weights_metadata.json', 'metrics.jsonl', 'results.json',
               'predictions_test.csv', 'protocol/train.txt', 'checkpoints/best',
               'checkpoints/latest', 'tensorboard'):
    assert (workdir / name).exists(), name
  epochs = run_dir.read_metrics(workdir)
  assert [e['epoch'] for e in epochs] == [1, 2]
  assert set(epochs[0]) >= {'train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy'}
  saved = json.loads((workdir / 'results.json').read_text())
  assert saved['metrics'] == results['metrics']
  assert saved['metrics']['num_examples'] == config.num_test
  assert saved['params']['trainable'] == saved['params']['total'] > 0
  assert saved['weights'] is None
  lines = (workdir / 'predictions_test.csv').read_text().splitlines()
  assert lines[0] == 'path,label,p_male' and len(lines) == 1 + config.num_test


def test_custom_model_learns_the_synthetic_faces(synthetic_faces, tmp_path):
  config = tiny_config('custom', synthetic_faces, tmp_path, num_epochs=6, num_train=48,
                       num_valid=20, num_test=20)
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['metrics']['accuracy'] >= 0.9


def test_evaluate_reproduces_test_metrics_from_the_checkpoint(custom_run, synthetic_faces):
  workdir, _, results = custom_run
  result = evaluate.evaluate(str(workdir), split='test')
  assert result['metrics']['confusion_matrix'] == results['metrics']['confusion_matrix']
  for key in ('accuracy', 'precision', 'recall', 'f1', 'roc_auc'):
    assert result['metrics'][key] == pytest.approx(results['metrics'][key]), key
  assert result['metrics']['loss'] == pytest.approx(results['metrics']['loss'], rel=1e-4)
  assert (workdir / 'eval_test.json').exists()
  table = evaluate.format_table(result)
  assert 'accuracy' in table and 'roc_auc' in table


def test_evaluate_gives_the_very_logits_of_the_runs_own_test_evaluation(
    synthetic_faces, tmp_path, monkeypatch):
  calls = []  # (desc, logits) of every sharded.predict_logits call.
  predict_logits = sharded.predict_logits

  def recording(*args, desc=None, **kwargs):
    calls.append((desc, predict_logits(*args, desc=desc, **kwargs)))
    return calls[-1][1]
  monkeypatch.setattr(sharded, 'predict_logits', recording)
  train.train_and_evaluate(tiny_config('custom', synthetic_faces, tmp_path), str(tmp_path / 'r'))
  (runs_own,) = [logits for desc, logits in calls if desc == 'test']
  del calls[:]
  evaluate.evaluate(str(tmp_path / 'r'), split='test')
  (evaluated,) = [logits for _, logits in calls]
  assert evaluated.shape == runs_own.shape
  np.testing.assert_array_equal(evaluated, runs_own)


def test_evaluate_on_any_labelled_folder(custom_run, synthetic_faces):
  workdir, _, _ = custom_run
  result = evaluate.evaluate(str(workdir), folder=str(synthetic_faces / 'valid'))
  assert result['metrics']['num_examples'] == 20


def test_a_run_saved_before_a_config_field_existed_still_loads(custom_run, tmp_path):
  workdir, _, _ = custom_run
  old = tmp_path / 'old_run'
  shutil.copytree(workdir, old)
  config = json.loads((old / 'config.json').read_text())
  del config['head_input_dropout']  # Added after the first runs were saved.
  (old / 'config.json').write_text(json.dumps(config))
  assert trained_run.load_trained(str(old)).config.head_input_dropout == 0.0


def save_as_before_the_items_had_names(workdir):
  """Rewrites a run's checkpoints as gender_jax saved them before their state items were named
  'train_state' and 'variables': both named 'state'."""
  trained = trained_run.load_trained(workdir)
  abstract = jax.eval_shape(lambda: train.create_train_state(
      trained.config, trained.model, jax.random.PRNGKey(0), steps_per_epoch=1))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  run_checkpoints = checkpoints.Checkpoints(workdir)
  train_state, progress = run_checkpoints.restore_latest(abstract, device)
  variables = run_checkpoints.restore_best(abstract.variables, device)
  shutil.rmtree(os.path.join(workdir, 'checkpoints'))
  for name, state, epoch in (('latest', train_state, progress['epoch']),
                             ('best', variables, progress['best_epoch'])):
    with ocp.CheckpointManager(os.path.join(workdir, 'checkpoints', name),
                               item_names=('state', 'progress')) as manager:
      manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  progress=ocp.args.JsonSave(progress)))
  return train_state, variables


def test_a_run_saved_before_the_checkpoint_items_had_names_loads_and_resumes(
    custom_run, tmp_path):
  workdir, config, results = custom_run
  old = tmp_path / 'old_run'
  shutil.copytree(workdir, old)
  train_state, variables = save_as_before_the_items_had_names(str(old))
  assert (old / 'checkpoints' / 'best' / str(results['best_epoch']) / 'state').is_dir()
  loaded = trained_run.load_trained(str(old)).variables
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(variables))
  resumed = config.copy_and_resolve_references()
  resumed.num_epochs = config.num_epochs + 1
  train.train_and_evaluate(resumed, str(old))
  assert checkpoints.Checkpoints(str(old)).latest_epoch() == resumed.num_epochs
  assert [m['epoch'] for m in run_dir.read_metrics(str(old))] == list(
      range(1, resumed.num_epochs + 1))


def test_rerun_of_a_finished_run_resumes_without_training_again(custom_run):
  workdir, config, results = custom_run
  before = (workdir / 'metrics.jsonl').read_text()
  again = train.train_and_evaluate(config, str(workdir))
  assert (workdir / 'metrics.jsonl').read_text() == before
  assert again['metrics'] == results['metrics']


def test_resuming_with_another_model_fails_clearly_and_keeps_the_runs_config(custom_run, tmp_path):
  workdir, config, results = custom_run
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy)
  saved_config = (copy / 'config.json').read_text()
  other = config.copy_and_resolve_references()
  other.custom_channels = (4, 16)
  other.num_epochs = config.num_epochs + 1
  with pytest.raises(run_dir.ExperimentMismatchError,
                     match=r'custom_channels: \[4, 8\] -> \[4, 16\].*new --workdir'):
    train.train_and_evaluate(other, str(copy))
  assert (copy / 'config.json').read_text() == saved_config
  assert evaluate.evaluate(str(copy))['metrics']['accuracy'] == results['metrics']['accuracy']
  (copy / 'config.json').unlink()  # Without the record, the checkpoint itself does not fit.
  with pytest.raises(checkpoints.CheckpointMismatchError, match='new --workdir'):
    train.train_and_evaluate(other, str(copy))


def test_results_name_the_commit_the_run_started_from(synthetic_faces, tmp_path, monkeypatch):
  # A long run outlives commits made while it trains; the code it ran is the code at its start.
  commits = iter(['at-start', 'later'])
  monkeypatch.setattr(run_dir, 'git_commit', lambda: next(commits))
  config = tiny_config('custom', synthetic_faces, tmp_path, num_epochs=1)
  assert train.train_and_evaluate(config, str(tmp_path / 'run'))['git_commit'] == 'at-start'


def test_git_commit_is_this_checkouts_head():
  head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True, text=True)
  if head.returncode:
    pytest.skip('the code is not in a git checkout')
  dirty = subprocess.run(['git', 'diff', '--quiet', 'HEAD'], cwd=REPO).returncode != 0
  assert run_dir.git_commit() == head.stdout.strip() + ('-dirty' if dirty else '')


def test_same_config_and_seed_give_the_same_results(custom_run, synthetic_faces, tmp_path):
  _, config, results = custom_run
  again = train.train_and_evaluate(config, str(tmp_path / 'again'))
  assert again['metrics'] == results['metrics']


@pytest.fixture(scope='module')
def vggface_runs(synthetic_faces, converted_weights, tmp_path_factory):
  """Tiny VGGFace runs on Keras-written converted weights, with and without the feature cache."""
  tmp = tmp_path_factory.mktemp('vggface_runs')
  runs = {}
  for cache in (True, False):
    config = tiny_config('vggface', synthetic_faces, tmp, cache_features=cache,
                         allow_random_base=False, weights=str(converted_weights['vggface']),
                         num_train=16, num_valid=8, num_test=8)
    runs[cache] = (tmp / f'cache_{cache}', train.train_and_evaluate(config, str(tmp / f'cache_{cache}')))
  return runs


def test_pretrained_run_records_its_converted_weights(vggface_runs, converted_weights):
  _, results = vggface_runs[True]
  metadata = json.loads((converted_weights['vggface'] / 'metadata.json').read_text())
  assert results['weights'] == {'source': 'vggface', 'sha256': metadata['h5_sha256'],
                                'random_base': False}
  assert results['params']['trainable'] < results['params']['total']


@pytest.mark.parametrize('cache', [True, False])
def test_frozen_base_stays_bit_identical_and_head_trains(vggface_runs, converted_weights, cache):
  workdir, _ = vggface_runs[cache]
  converted, _ = pretrained.load(converted_weights['vggface'])
  final = restore_latest(workdir)
  for a, b in zip(jax.tree.leaves(converted), jax.tree.leaves(final['base'])):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  config = tiny.get_config('vggface')
  initial = networks.initial_variables(networks.create_model(config, 'vggface_v1'), config,
                                    jax.random.split(jax.random.PRNGKey(config.seed))[0],
                                    base_params=converted)['params']
  assert not np.array_equal(np.asarray(initial['head']['logit']['kernel']),
                            np.asarray(final['head']['logit']['kernel']))


def test_cached_features_give_the_same_results_as_images(vggface_runs):
  (cached_dir, cached), (uncached_dir, uncached) = vggface_runs[True], vggface_runs[False]
  assert list((cached_dir.parent / 'tfds').rglob('*.features-*.npy'))  # The shared cache.
  assert cached['metrics']['confusion_matrix'] == uncached['metrics']['confusion_matrix']
  assert cached['metrics']['loss'] == pytest.approx(uncached['metrics']['loss'], rel=1e-4)
  for x, y in zip(run_dir.read_metrics(cached_dir), run_dir.read_metrics(uncached_dir)):
    assert x['train_loss'] == pytest.approx(y['train_loss'], rel=1e-4)
    assert x['valid_loss'] == pytest.approx(y['valid_loss'], rel=1e-4)


def test_finetuned_blocks_train_and_the_rest_stays_frozen(synthetic_faces, tmp_path):
  config = tiny_config('vgg16', synthetic_faces, tmp_path, finetune_blocks=('block5',),
                       finetune_learning_rate=1e-3, num_epochs=1, num_train=16, num_valid=8,
                       num_test=8)
  workdir = tmp_path / 'run'
  results = train.train_and_evaluate(config, str(workdir))
  assert results['weights'] == {'source': 'imagenet', 'sha256': None, 'random_base': True}
  initial = networks.initial_variables(
      networks.create_model(config, 'caffe_imagenet'), config,
      jax.random.split(jax.random.PRNGKey(config.seed))[0])['params']['base']
  final = restore_latest(workdir)['base']
  assert np.array_equal(initial['block4_conv3']['kernel'], final['block4_conv3']['kernel'])
  assert not np.array_equal(initial['block5_conv3']['kernel'], final['block5_conv3']['kernel'])


def test_pretrained_model_without_weights_says_how_to_get_them(synthetic_faces, tmp_path):
  config = tiny_config('vggface', synthetic_faces, tmp_path, allow_random_base=False,
                       weights=str(tmp_path / 'missing'))
  with pytest.raises(weights_folder.MissingWeightsError, match='weights_convert'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


FACE_RESNET_SHARD_SHA256 = 'cd' * 32


@pytest.fixture(scope='module')
def face_resnet_weights(tmp_path_factory):
  """A face_resnet folder as weights_convert writes one, of seeded random params."""
  out = tmp_path_factory.mktemp('face_resnet') / 'weights'
  params = face_resnet.FaceResNet().init(jax.random.PRNGKey(0), np.zeros((1, 72, 72, 3)))
  convert.write(out, jax.device_get(params['params']),
                {'source': 'face_resnet', 'architecture': 'face_resnet',
                 'preprocessing': 'face_api', 'weights_sha256': FACE_RESNET_SHARD_SHA256})
  return out


# The head's input (face_resnet_features) and whether the base's features are cached.
FACE_RESNET_RUNS = (('descriptor', True), ('pooled', True), ('descriptor', False))


@pytest.fixture(scope='module')
def face_resnet_runs(synthetic_faces, face_resnet_weights, tmp_path_factory):
  """{(features, cache): (workdir, results)} of tiny face_resnet runs on converted weights."""
  tmp = tmp_path_factory.mktemp('face_resnet_runs')
  runs = {}
  for features, cache in FACE_RESNET_RUNS:
    config = tiny_config('face_resnet', synthetic_faces, tmp, allow_random_base=False,
                         weights=str(face_resnet_weights), face_resnet_features=features,
                         cache_features=cache, num_train=16, num_valid=8, num_test=8)
    workdir = tmp / f'{features}_cache_{cache}'
    runs[features, cache] = workdir, train.train_and_evaluate(config, str(workdir))
  return runs


def test_a_run_is_refused_weights_from_another_source_file(face_resnet_runs):
  # face_resnet has no h5 file: its weights shard's sha256 tells its weights apart.
  workdir, results = face_resnet_runs[FACE_RESNET_RUNS[0]]
  config = ml_collections.ConfigDict(results['config'])
  metadata = json.loads((workdir / run_dir.WEIGHTS_METADATA).read_text())
  run_dir.check_experiment(str(workdir), config, metadata)  # The same weights: accepted.
  with pytest.raises(run_dir.ExperimentMismatchError, match='weights .sha256 of their source'):
    run_dir.check_experiment(str(workdir), config, {**metadata, 'weights_sha256': 'ef' * 32})


@pytest.mark.parametrize('features, cache', FACE_RESNET_RUNS)
def test_frozen_face_resnet_base_stays_bit_identical_and_only_the_head_trains(
    face_resnet_runs, face_resnet_weights, features, cache):
  workdir, results = face_resnet_runs[features, cache]
  assert results['weights'] == {'source': 'face_resnet', 'sha256': FACE_RESNET_SHARD_SHA256,
                                'random_base': False}
  converted, _ = face_resnet.load_params(face_resnet_weights)
  final = restore_latest(workdir)
  assert jax.tree.structure(converted) == jax.tree.structure(final['base'])
  for a, b in zip(jax.tree.leaves(converted), jax.tree.leaves(final['base'])):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  width = {'descriptor': 128, 'pooled': 256}[features]
  assert final['head']['dense0']['kernel'].shape == (width, 8)  # tiny's head_hidden=(8,).
  head_size = sum(np.size(a) for a in jax.tree.leaves(final['head']))
  assert results['params']['trainable'] == head_size


def test_face_resnet_features_are_cached_apart_and_give_the_images_results(face_resnet_runs):
  tfds = face_resnet_runs['descriptor', True][0].parent / 'tfds'
  keys = {p.name.split('.features-')[1][:16] for p in tfds.rglob('*.features-*')}
  assert len(keys) == 2  # Descriptor, pooled (each with its mirrored rows).
  (_, cached), (_, uncached) = (face_resnet_runs['descriptor', c] for c in (True, False))
  assert cached['metrics']['confusion_matrix'] == uncached['metrics']['confusion_matrix']
  assert cached['metrics']['loss'] == pytest.approx(uncached['metrics']['loss'], rel=1e-4)


def test_evaluate_restores_a_face_resnet_run(face_resnet_runs):
  workdir, results = face_resnet_runs['pooled', True]
  result = evaluate.evaluate(str(workdir), split='test')
  assert result['metrics']['confusion_matrix'] == results['metrics']['confusion_matrix']
  assert result['metrics']['loss'] == pytest.approx(results['metrics']['loss'], rel=1e-4)


@pytest.mark.parametrize('weights, says', [
    ('missing', 'python -m weights_convert --source face_resnet --download --out {tmp}/missing'),
    ('', '--config.weights=weights/face_resnet'),
])
def test_face_resnet_without_weights_is_one_line_with_the_command(
    synthetic_faces, tmp_path, weights, says):
  config = tiny_config('face_resnet', synthetic_faces, tmp_path, allow_random_base=False,
                       weights=weights and str(tmp_path / weights))
  with pytest.raises(weights_folder.MissingWeightsError) as error:
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert '\n' not in str(error.value) and says.format(tmp=tmp_path) in str(error.value)
  assert not (tmp_path / 'tfds').exists()  # Before any data is read.


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    synthetic_faces, tmp_path, monkeypatch):
  config = tiny_config('custom', synthetic_faces, tmp_path, num_epochs=1)
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  config.num_epochs = 2
  monkeypatch.setattr(train, 'binary_cross_entropy', lambda logits, labels: logits * np.nan)
  with pytest.raises(train.NonFiniteLossError, match='epoch 2'):
    train.train_and_evaluate(config, workdir)
  assert checkpoints.Checkpoints(workdir).latest_epoch() == 1


@pytest.mark.skipif(jax.device_count() != 4, reason='needs the 4 fake CPU devices of conftest')
def test_batch_size_must_split_over_devices(synthetic_faces, tmp_path):
  config = tiny_config('custom', synthetic_faces, tmp_path, batch_size=6)
  with pytest.raises(ValueError, match='multiple of the 4 devices'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_one_device_four_devices_and_two_processes_give_the_same_results(
    synthetic_faces, tmp_path):
  # Every augmentation on: the training step makes it on each device's share of the batch.
  overrides = {'data_dir': synthetic_faces, 'tfds_dir': tmp_path / 'tfds', 'batch_size': 8,
               'num_epochs': 1, 'augment_scale': 0.15, 'augment_aspect': 0.05,
               'augment_rotate': 15.0, 'augment_brightness': 0.4, 'augment_contrast': 0.4,
               'augment_saturation': 0.8, 'augment_frame': '(0.1,0.35,0.1,0.1)'}
  for devices in (1, 4):
    run_main(tmp_path / f'dev{devices}', 'configs/tiny.py:custom', overrides, devices=devices)
  # Two processes of two devices each, joined through jax.distributed on localhost.
  address = f'localhost:{free_port()}'
  processes = [run_main(tmp_path / 'two_processes', 'configs/tiny.py:custom', overrides,
                        devices=2, wait=False,
                        flags=[f'--coordinator_address={address}', '--num_processes=2',
                               f'--process_id={i}'])
               for i in range(2)]
  for process in processes:
    assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
  runs = {name: json.loads((tmp_path / name / 'results.json').read_text())
          for name in ('dev1', 'dev4', 'two_processes')}
  assert runs['dev1']['devices'].startswith('1 x') and runs['dev4']['devices'].startswith('4 x')
  assert runs['two_processes']['devices'].startswith('4 x')
  for name in ('dev4', 'two_processes'):
    assert runs[name]['metrics']['confusion_matrix'] == runs['dev1']['metrics']['confusion_matrix']
    assert runs[name]['metrics']['loss'] == pytest.approx(runs['dev1']['metrics']['loss'],
                                                          rel=1e-5)
    for a, b in zip(jax.tree.leaves(restore_latest(tmp_path / 'dev1')),
                    jax.tree.leaves(restore_latest(tmp_path / name))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_killed_run_resumes_to_the_same_results(synthetic_faces, tmp_path):
  overrides = {'data_dir': synthetic_faces, 'tfds_dir': tmp_path / 'tfds', 'num_epochs': 4}
  run_main(tmp_path / 'straight', 'configs/tiny.py:custom', overrides)
  workdir = tmp_path / 'killed'
  process = run_main(workdir, 'configs/tiny.py:custom', overrides, wait=False)
  latest = workdir / 'checkpoints' / 'latest'
  deadline = time.time() + 300
  while not (latest.is_dir() and any(p.name.isdigit() for p in latest.iterdir())):
    assert process.poll() is None, process.stderr.read()[-3000:]
    assert time.time() < deadline
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (workdir / 'results.json').exists()
  run_main(workdir, 'configs/tiny.py:custom', overrides)
  straight, resumed = (json.loads((tmp_path / n / 'results.json').read_text())
                       for n in ('straight', 'killed'))
  assert resumed['metrics'] == straight['metrics']
  learned = ('epoch', 'train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy')
  assert ([{k: e[k] for k in learned} for e in run_dir.read_metrics(workdir)] ==
          [{k: e[k] for k in learned} for e in run_dir.read_metrics(tmp_path / 'straight')])


def test_an_epoch_runs_steps_in_flight_ahead_at_most_and_its_bar_counts_steps_done(monkeypatch):
  events = []

  class Bar:
    n = 0

    def update(self, n=1):
      self.n += n
      events.append(f'bar {self.n}')

  def step(state, batch):
    events.append(f'dispatch {batch}')
    return state + 1, {'loss': np.float32(batch), 'count': np.float32(1)}

  monkeypatch.setattr(jax, 'block_until_ready',
                      lambda sums: events.append(f'wait {int(sums["loss"])}'))
  state, totals = train.train_epoch(step, 0, range(4), Bar(), steps_in_flight=2)
  # Step N is waited for once step N + 2 is dispatched; the last two complete with the epoch.
  assert events == ['dispatch 0', 'dispatch 1', 'dispatch 2', 'wait 0', 'bar 1',
                    'dispatch 3', 'wait 1', 'bar 2', 'bar 4']
  assert state == 4 and totals == {'loss': 6.0, 'count': 4.0}


def logits_as_features(variables, features, train=False, rngs=None, method=None):
  """A model whose logits are its (cached) features: what it scores is what the test gives."""
  del variables, train, rngs, method
  return features


def test_validate_epoch_gives_the_valid_loss_and_accuracy_of_the_models_logits():
  logits = np.array([2.0, -1.0, -3.0, 0.5, 4.0, -0.5], np.float32)
  labels = np.array([1, 0, 1, 0, 1, 0], np.int32)  # Examples 0, 1, 4 and 5 predicted right.
  split = batching.Split('valid', np.zeros((6, 2, 2, 3), np.uint8), labels, paths=[],
                         source_dir='')
  valid = train.validate_epoch(sharded.Mesh.create(), logits_as_features, {}, split,
                               batch_size=4, features=logits)
  loss = np.mean(np.logaddexp(0, logits) - labels * logits)
  assert valid == {'valid_loss': pytest.approx(loss, rel=1e-6), 'valid_accuracy': 4 / 6}


def test_the_results_record_holds_the_results_fields_in_order():
  config = tiny.get_config('custom')
  record = run_dir.results_record(
      config=config, metrics={}, best_epoch=1, epochs_trained=2, train_seconds=4.0,
      feature_seconds=0.0, total_seconds=5.0, images_trained=96, params={}, weights_metadata=None,
      git_commit=None, devices='1 x cpu', command='pytest')
  assert tuple(record) == run_dir.RESULTS_FIELDS
  assert record['train_images_per_second'] == 24.0 and record['config'] == config.to_dict()
