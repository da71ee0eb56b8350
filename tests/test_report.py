"""The comparison report from run directories that follow the run directory contract."""
import json
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from gender_jax.analysis import metrics
from gender_jax.analysis import stats
from gender_jax.report import document
from gender_jax.report import figures
from gender_jax.report import runs
from gender_jax.training import run_dir

REPO = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ('## Setup', '## Results', '## Learning curves', '## Confusion matrices and ROC curves',
            '## Test predictions', '## Most confident mistakes')
FIGURES = ('learning_curves', 'confusion_roc', 'test_samples', 'confident_mistakes')


def write_faces(data_dir, per_class=6):
  """Test images in the face folder layout; returns their relative paths and labels."""
  rng = np.random.default_rng(0)
  rows = []
  for label, name in enumerate(('female', 'male')):
    (data_dir / 'test' / name).mkdir(parents=True)
    for i in range(per_class):
      path = f'test/{name}/{label}{i:05d}.jpg'
      Image.fromarray(rng.integers(0, 255, (109, 89, 3), np.uint8)).save(data_dir / path)
      rows.append((path, label))
  return rows


def write_fake_run(workdir, data_dir, rows, model='custom', weights=None, epochs=3, seed=0):
  """A run directory written through gender_jax.run_dir, with plausible, seeded numbers."""
  rng = np.random.default_rng(seed)
  workdir.mkdir(parents=True)
  labels = np.array([label for _, label in rows])
  p_male = labels * 0.35 + rng.uniform(0.1, 0.65, len(rows))  # Some mistakes each way.
  run_dir.write_predictions(workdir, 'test', [p for p, _ in rows], labels, p_male)
  writer = run_dir.MetricsWriter(workdir, resume_epoch=0)
  for e in range(1, epochs + 1):
    writer.write(e, {'train_loss': 1 / e, 'train_accuracy': 1 - 0.3 / e, 'valid_loss': 1.1 / e,
                     'valid_accuracy': 1 - 0.35 / e, 'learning_rate': 1e-3, 'epoch_seconds': 2.0,
                     'train_images_per_second': 100.0})
  writer.close()
  config = {'model': model, 'image_size': 32, 'num_train': 24, 'seed': 0, 'train_seed': -1}
  run_dir.write_json(workdir / run_dir.CONFIG, config)
  scores = metrics.classification_metrics(labels, np.log(p_male) - np.log1p(-p_male))
  del scores['intervals']  # As runs recorded before intervals were.
  run_dir.write_results(workdir, {
      'model': model, 'split': 'test', 'metrics': scores,
      'best_epoch': epochs, 'num_epochs': epochs, 'epochs_trained': epochs,
      'train_seconds': 6.0, 'feature_seconds': 1.0, 'total_seconds': 8.0,
      'train_images_per_second': 100.0, 'params': {'trainable': 1234, 'total': 5678},
      'weights': weights, 'data_dir': str(data_dir), 'config': config, 'git_commit': None,
      'devices': '4 x cpu', 'platform': 'test-machine', 'command': 'pytest',
      'finished': '2026-01-02T03:04:05Z'})


@pytest.fixture(scope='module')
def study_dir(tmp_path_factory):
  """A study with a custom run, a random-base vgg16 run and a skipped vggface."""
  faces = tmp_path_factory.mktemp('faces')
  rows = write_faces(faces)
  study = tmp_path_factory.mktemp('study')
  write_fake_run(study / 'custom', faces, rows)
  write_fake_run(study / 'vgg16', faces, rows, model='vgg16', seed=1,
                 weights={'source': 'keras', 'h5_sha256': 'ab' * 32, 'random_base': True})
  (study / 'study.json').write_text(json.dumps({
      'command': 'python -m gender_jax.study', 'started': 'x', 'finished': 'y',
      'experiments': {'custom': {'status': 'done', 'workdir': 'custom',
                                 'machine': {'platform': 'test-machine'}},
                      'vgg16': {'status': 'done', 'workdir': 'vgg16'},
                      'vggface': {'status': 'skipped', 'workdir': 'vggface',
                                  'reason': 'weights/vggface missing: run weights_convert'}}}))
  return study


@pytest.fixture(scope='module')
def report_text(study_dir):
  return document.write_report([study_dir], study_dir).read_text()


def test_report_has_every_section_figure_and_a_row_per_model(study_dir, report_text):
  text = report_text
  for heading in SECTIONS + ('## Skipped experiments',):
    assert heading in text
  for model in ('custom', 'vgg16', 'vggface'):
    assert any(line.startswith(f'| {model} | {model} |') for line in text.splitlines())
  for name in FIGURES:
    assert f'figures/{name}.png' in text
    with Image.open(study_dir / 'figures' / f'{name}.png') as image:
      assert image.size[0] > 100 and np.asarray(image.convert('L')).std() > 0


def test_setup_says_where_and_how_runs_were_made(report_text):
  text = report_text
  assert 'test-machine' in text and 'python -m gender_jax.study' in text
  assert '4 x cpu' in text
  assert '| custom | 2026-01-02T03:04:05Z |' in text  # When the run finished, as it recorded.


def test_random_base_is_reported_loudly(report_text):
  text = report_text
  assert 'RANDOM BASE (NOT PRETRAINED)' in text
  assert 'WARNING: vgg16 ran on a RANDOM base' in text


@pytest.mark.parametrize('weights, says', [
    (None, 'none (trained from scratch)'),
    ({'source': 'vggface', 'h5_sha256': 'ab' * 32, 'random_base': False},
     'vggface (sha256 abababababab)'),
    ({'source': 'face_resnet', 'h5_sha256': None, 'sha256': 'cd' * 32, 'random_base': False},
     'face_resnet (sha256 cdcdcdcdcdcd)'),  # Its npm tarball's.
    # Runs recorded before 'sha256' hold the h5 file's alone: face_resnet's none.
    ({'source': 'face_resnet', 'h5_sha256': None, 'random_base': False}, 'face_resnet'),
])
def test_weights_provenance_names_the_source_and_the_h5_files_hash_where_there_is_one(
    weights, says):
  assert runs.weights_provenance(weights) == says


def test_skipped_experiment_reason_is_reported(report_text):
  text = report_text
  assert 'weights/vggface missing: run weights_convert' in text


def test_missing_data_folder_is_said_not_fatal(study_dir, tmp_path):
  text = document.write_report([study_dir], tmp_path / 'out', data_dir=tmp_path / 'gone').read_text()
  assert 'images not shown: data folder' in text
  assert not (tmp_path / 'out' / 'figures' / 'test_samples.png').exists()
  assert (tmp_path / 'out' / 'figures' / 'confusion_roc.png').exists()


def test_run_dirs_can_be_given_directly(study_dir, tmp_path):
  text = document.write_report([study_dir / 'custom', study_dir / 'vgg16'],
                             tmp_path / 'out').read_text()
  assert '| custom | custom |' in text and '| vgg16 | vgg16 |' in text
  assert '## Skipped experiments' not in text


def test_confident_mistakes_are_the_most_wrong(study_dir):
  run = runs.load_run(study_dir / 'custom')
  run.labels[:] = 0
  run.p_male[:] = np.linspace(0, 1, len(run.p_male))
  np.testing.assert_array_equal(figures.confident_mistakes(run, 3), [len(run.p_male) - 1,
                                                                   len(run.p_male) - 2,
                                                                   len(run.p_male) - 3])


def test_sample_is_the_same_for_runs_of_one_protocol(study_dir):
  custom, vgg16 = (runs.load_run(study_dir / m) for m in ('custom', 'vgg16'))
  pick = lambda run: [run.paths[i] for i in figures.sample_indices(run, 2)]
  assert pick(custom) == pick(vgg16)


def test_command_line_writes_the_report_where_asked(study_dir, tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'gender_jax.report', str(study_dir / 'custom'),
       str(study_dir / 'vgg16'), f'--out={tmp_path / "out"}'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert (tmp_path / 'out' / 'report.md').exists()
  assert (tmp_path / 'out' / 'figures' / 'confident_mistakes.png').exists()


def test_runs_on_the_same_test_images_get_paired_tests(study_dir, report_text):
  custom, vgg16 = (runs.load_run(study_dir / m) for m in ('custom', 'vgg16'))
  right_custom = custom.predicted == custom.labels
  right_vgg16 = vgg16.predicted == vgg16.labels  # Same rows, same order in both CSVs.
  b, c = int(np.sum(right_custom & ~right_vgg16)), int(np.sum(~right_custom & right_vgg16))
  assert b + c > 0
  (test,) = json.loads((study_dir / document.PAIRED_FILE).read_text())
  assert (test['a'], test['b'], test['num_examples']) == ('custom', 'vgg16', 12)
  assert test['mcnemar'] == stats.mcnemar_exact(right_custom, right_vgg16)
  assert (test['mcnemar']['b'], test['mcnemar']['c']) == (b, c)
  auc = test['auc_difference']
  assert auc['difference'] == pytest.approx(metrics.roc_auc(custom.labels, custom.p_male) -
                                            metrics.roc_auc(vgg16.labels, vgg16.p_male))
  assert auc['low'] <= auc['difference'] <= auc['high'] and 0 <= auc['p_value'] <= 1
  assert '## Paired tests' in report_text
  row = next(l for l in report_text.splitlines() if l.startswith('| custom | vgg16 | 12 |'))
  assert f"| {b} | {c} | {test['mcnemar']['p_value']:.3g} |" in row
  assert f"{auc['difference']:+.4f} [{auc['low']:+.4f}, {auc['high']:+.4f}]" in row


def test_pairs_are_matched_by_path_not_row_order(study_dir, tmp_path):
  shuffled = tmp_path / 'shuffled'
  shuffled.mkdir()
  for name in ('results.json', 'metrics.jsonl', 'config.json'):
    (shuffled / name).write_text((study_dir / 'vgg16' / name).read_text())
  header, *rows = (study_dir / 'vgg16' / 'predictions_test.csv').read_text().splitlines()
  (shuffled / 'predictions_test.csv').write_text('\n'.join([header] + rows[::-1]) + '\n')
  tests, unpaired = runs.paired_tests([runs.load_run(study_dir / 'custom'),
                                       runs.load_run(shuffled)])
  expected, _ = runs.paired_tests([runs.load_run(study_dir / m) for m in ('custom', 'vgg16')])
  assert not unpaired and tests[0]['mcnemar'] == expected[0]['mcnemar']
  assert tests[0]['auc_difference'] == expected[0]['auc_difference']


def test_runs_on_other_test_images_are_not_paired(study_dir, tmp_path):
  faces = tmp_path / 'faces'
  rows = write_faces(faces, per_class=4)
  write_fake_run(tmp_path / 'other', faces, rows)
  text = document.write_report([study_dir / 'custom', tmp_path / 'other'],
                             tmp_path / 'out').read_text()
  assert 'No two runs were scored on the same test images.' in text
  assert '- custom and other: not compared, their test images differ.' in text
  assert json.loads((tmp_path / 'out' / document.PAIRED_FILE).read_text()) == []


def test_recorded_intervals_are_shown_beside_accuracy_and_auc(study_dir, tmp_path):
  run = tmp_path / 'with_intervals'
  faces = tmp_path / 'faces'
  write_fake_run(run, faces, write_faces(faces))
  results = json.loads((run / 'results.json').read_text())
  results['metrics']['intervals'] = {'accuracy': [0.5, 0.75], 'balanced_accuracy': [0.5, 0.7],
                                     'roc_auc': [0.8, 0.95]}
  (run / 'results.json').write_text(json.dumps(results))
  text = document.write_report([study_dir / 'custom', run], tmp_path / 'out').read_text()
  row = next(l for l in text.splitlines() if l.startswith('| with_intervals | custom |'))
  accuracy = results['metrics']['accuracy']
  auc = results['metrics']['roc_auc']
  assert f'| {accuracy:.4f} [0.5000, 0.7500] |' in row and f'| {auc:.4f} [0.8000, 0.9500] |' in row
  old = next(l for l in text.splitlines() if l.startswith('| custom | custom |'))
  assert '[' not in old  # A run from before intervals shows none.
