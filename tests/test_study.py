"""The study: every model on one protocol, skips for missing weights, then the full report."""
import json
import os
import pathlib
import subprocess
import sys

from absl import app
import numpy as np
from PIL import Image
import pytest

from gender_jax import study
from gender_jax.report import document
from gender_jax.report import runs as runs_lib
from gender_jax.training import sharded

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / 'configs' / 'tiny.py')
SECTIONS = ('## Setup', '## Results', '## Skipped experiments', '## Learning curves',
            '## Confusion matrices and ROC curves', '## Calibration', '## Test predictions',
            '## Most confident mistakes', '## What the models look at')
FIGURES = ('learning_curves', 'confusion_roc', 'reliability', 'test_samples', 'confident_mistakes',
           'saliency')


def test_command_line_fields_override_each_models_own_config():
  configs = study.experiment_configs(study.MODELS, str(REPO / 'configs' / 'default.py'),
                                     {'num_epochs': 3, 'data_dir': '/faces'})
  assert [c.model for c in configs.values()] == list(study.MODELS)
  assert all(c.num_epochs == 3 and c.data_dir == '/faces' for c in configs.values())
  assert configs['vgg16'].weights == 'weights/imagenet'  # Its own field stays.
  assert configs['vggface'].weights == 'weights/vggface'
  assert configs['face_resnet'].weights == 'weights/face_resnet'
  assert configs['face_resnet'].image_size == 150 and configs['face_resnet'].face_align == 'mtcnn'


def test_a_config_taking_an_argument_is_called_with_each_model():
  configs = study.experiment_configs(['custom', 'vggface'], f'{TINY}:custom', {'seed': 7})
  assert configs['vggface'].model == 'vggface' and configs['vggface'].image_size == 32
  assert configs['custom'].seed == configs['vggface'].seed == 7


@pytest.mark.parametrize('filename, overrides', [
    ('configs/default.py', {'model': 'vgg16'}),
    ('configs/default.py', {'weights': 'weights/imagenet'}),
    ('configs/vgg16.py', {}),  # Its values would be silently ignored.
])
def test_ambiguous_configs_are_refused(filename, overrides):
  with pytest.raises(app.UsageError):
    study.experiment_configs(study.MODELS, filename, overrides)


@pytest.fixture(scope='module')
def tiny_study(tmp_path_factory, synthetic_faces):
  """The study over the tiny configs: custom trains, vgg16 lacks its converted weights.

  (A pretrained model that trains costs ~30 s of VGG16 compilation on CPU: the report's
  weights provenance is tested on fake run dirs in test_report.py instead.)
  """
  workdir = tmp_path_factory.mktemp('study')
  overrides = {'data_dir': str(synthetic_faces), 'tfds_dir': str(workdir / 'tfds')}
  experiments = study.experiment_configs(['custom', 'vgg16'], f'{TINY}:custom', overrides)
  experiments['vgg16'].weights = str(workdir / 'no_vgg16_weights')
  return workdir, study.run_study(study.sweep_points(experiments), str(workdir), command='pytest')


def test_study_runs_each_model_and_records_the_skip(tiny_study):
  workdir, record = tiny_study
  assert json.loads((workdir / 'study.json').read_text()) == record
  statuses = {m: e['status'] for m, e in record['experiments'].items()}
  assert statuses == {'custom': 'done', 'vgg16': 'skipped'}
  assert 'python -m weights_convert' in record['experiments']['vgg16']['reason']
  assert (workdir / 'custom' / 'results.json').exists()


def test_study_report_has_every_section_figure_and_a_row_per_model(tiny_study):
  workdir, _ = tiny_study
  text = (workdir / 'report.md').read_text()
  for heading in SECTIONS:
    assert heading in text
  for model in ('custom', 'vgg16'):
    assert f'| {model} | {model} |' in text
  for name in FIGURES:
    assert f'figures/{name}.png' in text
    with Image.open(workdir / 'figures' / f'{name}.png') as image:
      assert np.asarray(image.convert('L')).std() > 0


def test_rerun_of_one_model_resumes_it_and_keeps_the_others(tiny_study):
  workdir, _ = tiny_study
  history = (workdir / 'custom' / 'metrics.jsonl').read_text()
  data_dir = json.loads((workdir / 'custom' / 'results.json').read_text())['data_dir']
  experiments = study.experiment_configs(['custom'], f'{TINY}:custom', {
      'data_dir': data_dir, 'tfds_dir': str(workdir / 'tfds')})
  record = study.run_study(study.sweep_points(experiments), str(workdir),
                          command='pytest rerun')
  assert {m: e['status'] for m, e in record['experiments'].items()} == {
      'custom': 'done', 'vgg16': 'skipped'}
  assert (workdir / 'custom' / 'metrics.jsonl').read_text() == history  # Nothing retrained.


def test_command_line_skips_missing_weights_with_the_commands(tmp_path, synthetic_faces):
  env = {**os.environ, 'PYTHONPATH': str(REPO)}
  result = subprocess.run(
      [sys.executable, '-m', 'gender_jax.study', f'--workdir={tmp_path / "study"}',
       f'--config={TINY}:vgg16', '--models=vgg16', f'--config.data_dir={synthetic_faces}',
       f'--config.tfds_dir={tmp_path / "tfds"}'],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert 'Skipping vgg16' in result.stdout and 'python -m weights_convert' in result.stdout
  record = json.loads((tmp_path / 'study' / 'study.json').read_text())
  assert record['experiments']['vgg16']['status'] == 'skipped'
  assert '--models=vgg16' in record['command']
  assert '## Skipped experiments' in (tmp_path / 'study' / 'report.md').read_text()


def test_sweep_points_cover_every_size_and_seed_seed_by_seed():
  experiments = study.experiment_configs(['custom', 'vgg16'], f'{TINY}:custom', {})
  points = study.sweep_points(experiments, sizes=[32, 16], seeds=[3, 4])
  assert [p.name for p in points] == [
      'custom/train16_seed3', 'vgg16/train16_seed3', 'custom/train32_seed3', 'vgg16/train32_seed3',
      'custom/train16_seed4', 'vgg16/train16_seed4', 'custom/train32_seed4', 'vgg16/train32_seed4']
  assert all(p.config.num_train == int(p.name.split('train')[1].split('_')[0]) for p in points)
  assert all(p.config.seed == 0 for p in points)  # The protocol's seed stays.
  assert experiments['custom'].train_seed == -1  # The experiments are not changed.


def test_a_sweep_stopped_part_way_finishes_only_its_missing_points(
    tmp_path, synthetic_faces, monkeypatch):
  experiments = study.experiment_configs(['custom'], f'{TINY}:custom', {
      'data_dir': str(synthetic_faces), 'tfds_dir': str(tmp_path / 'tfds'), 'num_epochs': 1})
  points = study.sweep_points(experiments, sizes=[16, 32], seeds=[0, 1])
  train_and_evaluate = study.train.train_and_evaluate
  calls = []

  def stopped_in_the_third_point(config, workdir, command=None):
    calls.append(workdir)
    if len(calls) == 3:
      raise KeyboardInterrupt  # Ctrl-C.
    return train_and_evaluate(config, workdir, command)

  monkeypatch.setattr(study.train, 'train_and_evaluate', stopped_in_the_third_point)
  with pytest.raises(KeyboardInterrupt):
    study.run_study(points, str(tmp_path / 'sweep'))
  files = lambda point: {f: (tmp_path / 'sweep' / point / f).stat().st_mtime_ns
                         for f in ('results.json', 'metrics.jsonl', 'predictions_test.csv')}
  finished = {p.name: files(p.name) for p in points[:2]}
  assert not (tmp_path / 'sweep' / points[2].name / 'results.json').exists()

  monkeypatch.setattr(study.train, 'train_and_evaluate', train_and_evaluate)
  record = study.run_study(points, str(tmp_path / 'sweep'))
  assert {name: files(name) for name in finished} == finished  # Left as they were.
  assert {e['status'] for e in record['experiments'].values()} == {'done'}
  assert all((tmp_path / 'sweep' / p.name / 'results.json').exists() for p in points[2:])
  protocol = lambda p, split: (tmp_path / 'sweep' / p / 'protocol' / f'{split}.txt').read_text()
  assert protocol('custom/train16_seed0', 'test') == protocol('custom/train32_seed1', 'test')
  assert len(protocol('custom/train32_seed1', 'train').splitlines()) == 32

  text = (tmp_path / 'sweep' / 'report.md').read_text()
  assert text.index('## Data efficiency') < text.index('## Results')
  assert '| custom | 16 | 0,1 |' in text and '| custom | 32 | 0,1 |' in text
  assert 'one run per model, its largest training set at its first seed: custom/train32_seed0' \
      in text
  with Image.open(tmp_path / 'sweep' / 'figures' / 'data_efficiency.png') as image:
    assert np.asarray(image.convert('L')).std() > 0

  # Its curve, summarised, drawn beside a single run's report elsewhere (--sweep_summary).
  summary = tmp_path / 'sweep' / runs_lib.SWEEP_SUMMARY
  assert set(json.loads(summary.read_text())['series']['custom']) == {'16', '32'}
  document.write_report([str(tmp_path / 'sweep' / points[0].name)], str(tmp_path / 'alone'),
                        sweep_summaries=[str(summary)])
  text = (tmp_path / 'alone' / 'report.md').read_text()
  assert '| custom† | 16 | 0,1 |' in text and '| custom† | 32 | 0,1 |' in text
  assert (tmp_path / 'alone' / 'figures' / 'data_efficiency.png').exists()
  (tmp_path / 'garbled.json').write_text('{"series": 3}')
  with pytest.raises(runs_lib.SweepSummaryError, match='garbled.json: not a sweep summary'):
    runs_lib.load_sweep_summary(tmp_path / 'garbled.json')
  for field, value in (('seeds', '0,1'), ('train_seconds', 'fast')):  # Written by hand, wrongly.
    record = json.loads(summary.read_text())
    record['series']['custom']['16'][field] = value
    (tmp_path / 'by_hand.json').write_text(json.dumps(record))
    with pytest.raises(runs_lib.SweepSummaryError, match=f'custom/16: "{field}" is'):
      runs_lib.load_sweep_summary(tmp_path / 'by_hand.json')


def test_a_sweep_runs_the_frozen_base_once_per_image(
    tmp_path, synthetic_faces, converted_weights, monkeypatch):
  experiments = study.experiment_configs(['vggface'], f'{TINY}:vggface', {
      'data_dir': str(synthetic_faces), 'tfds_dir': str(tmp_path / 'tfds'), 'num_epochs': 1,
      'weights': str(converted_weights['vggface'])})
  encoded = {False: [], True: []}  # Paths the base ran on, unflipped and flipped.
  extract_features = sharded.extract_features

  def counted(mesh, apply_fn, variables, split, batch_size, flip=False, desc=None):
    encoded[flip].extend(split.paths)
    return extract_features(mesh, apply_fn, variables, split, batch_size, flip, desc)

  monkeypatch.setattr(sharded, 'extract_features', counted)
  points = study.sweep_points(experiments, sizes=[8, 16], seeds=[0, 1])
  record = study.run_study(points, str(tmp_path / 'sweep'))
  assert {e['status'] for e in record['experiments'].values()} == {'done'}

  listed = lambda point, split: {line.split('\t')[0] for line in (
      tmp_path / 'sweep' / point / 'protocol' / f'{split}.txt').read_text().splitlines()}
  train_images = listed('vggface/train8_seed0', 'train') | listed('vggface/train16_seed0', 'train')
  evaluated = listed('vggface/train8_seed0', 'valid') | listed('vggface/train8_seed0', 'test')
  assert sorted(encoded[True]) == sorted(train_images)  # Each mirror image once.
  assert sorted(encoded[False]) == sorted(train_images | evaluated)  # Each image once.
  assert len(train_images) > 16  # Two draws: the second size needed new images.
