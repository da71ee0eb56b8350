"""Prediction on arbitrary image files with a trained run: any mode and size, bad files reported."""
import csv
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from gender_jax import predict
from gender_jax.training import trained_run

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def trained(run_dir):
  return trained_run.load_trained(str(run_dir))


def _face(height=109, width=89):
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (height, width, 3), np.uint8)


@pytest.fixture(scope='module')
def images(tmp_path_factory):
  """One file per mode Pillow reads, nested folders, plus files that are not images."""
  root = tmp_path_factory.mktemp('images')
  (root / 'nested' / 'deeper').mkdir(parents=True)
  rgb = Image.fromarray(_face())
  grey16 = (np.asarray(rgb.convert('L'), np.uint16) * 257)
  good = {
      'rgb.jpg': rgb,
      'grey.png': rgb.convert('L'),
      'grey16.png': Image.fromarray(grey16),  # Pillow mode 'I;16'.
      'rgba.png': rgb.convert('RGBA'),
      'grey_alpha.png': rgb.convert('LA'),
      'cmyk.jpg': rgb.convert('CMYK'),
      'palette.gif': rgb.convert('P'),
      'bilevel.bmp': rgb.convert('1'),
      'nested/large.png': Image.fromarray(_face(900, 700)),
      'nested/deeper/small.webp': Image.fromarray(_face(7, 5)),
  }
  for name, image in good.items():
    image.save(root / name)
  (root / 'notes.txt').write_text('not an image, and not an image extension: ignored')
  bad = {'text.jpg': b'this is not a JPEG', 'empty.png': b'',
         'truncated.jpg': (root / 'rgb.jpg').read_bytes()[:300]}
  for name, data in bad.items():
    (root / name).write_bytes(data)
  return root, sorted(str(root / n) for n in good), sorted(str(root / n) for n in bad)


def test_folders_are_searched_recursively_for_image_extensions(images):
  root, good, bad = images
  files, errors = predict.find_images([str(root)])
  assert sorted(files) == sorted(good + bad)
  assert not errors


def test_missing_paths_and_empty_folders_are_reported(tmp_path):
  (tmp_path / 'empty').mkdir()
  files, errors = predict.find_images([str(tmp_path / 'gone.jpg'), str(tmp_path / 'empty')])
  assert not files
  assert [p for p, _ in errors] == [str(tmp_path / 'gone.jpg'), str(tmp_path / 'empty')]


def test_every_mode_and_size_is_predicted(trained, images):
  _, good, _ = images
  predictions, errors = predict.predict_files(trained, good, batch_size=4)
  assert not errors
  assert [p.path for p in predictions] == good
  assert all(0 <= p.p_male <= 1 for p in predictions)


def test_bad_files_are_reported_and_the_rest_predicted(trained, images):
  _, good, bad = images
  predictions, errors = predict.predict_files(trained, sorted(good + bad), batch_size=4)
  assert sorted(p.path for p in predictions) == good
  assert sorted(p for p, _ in errors) == bad
  assert all(reason for _, reason in errors)


def test_sixteen_bit_grey_predicts_as_its_eight_bit_twin(trained, images):
  root, _, _ = images
  grey, grey16 = predict.predict_files(
      trained, [str(root / 'grey.png'), str(root / 'grey16.png')])[0]
  assert grey16.p_male == pytest.approx(grey.p_male, abs=1e-3)


def test_predictions_match_the_runs_own_test_predictions(trained, run_dir, synthetic_faces):
  with open(run_dir / 'predictions_test.csv', newline='') as f:
    expected = {str(synthetic_faces / r['path']): float(r['p_male']) for r in csv.DictReader(f)}
  predictions, errors = predict.predict_files(trained, sorted(expected))
  assert not errors
  for p in predictions:
    assert p.p_male == pytest.approx(expected[p.path], abs=1e-5), p.path


def _cli(*args):
  env = {**os.environ, 'PYTHONPATH': str(REPO)}
  return subprocess.run([sys.executable, '-m', 'gender_jax.predict', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_cli_writes_a_csv_row_per_file_and_reports_bad_ones(run_dir, images, tmp_path):
  root, good, bad = images
  out = tmp_path / 'predictions.csv'
  result = _cli(f'--workdir={run_dir}', f'--csv={out}', str(root))
  assert result.returncode == 0, result.stderr
  with open(out, newline='') as f:
    rows = {row['path']: row for row in csv.DictReader(f)}
  assert sorted(rows) == sorted(good + bad)
  for path in good:
    assert rows[path]['predicted'] in ('female', 'male')
    assert rows[path]['predicted'] == predict.label_of(float(rows[path]['p_male']))
  for path in bad:
    assert rows[path]['error'] and not rows[path]['p_male']
    assert f'Not predicted: {path}' in result.stderr


def test_cli_prints_a_table_and_fails_when_nothing_is_predicted(run_dir, images):
  root, good, bad = images
  result = _cli(f'--workdir={run_dir}', good[0], bad[0])
  assert result.returncode == 0, result.stderr
  assert 'P(male)' in result.stdout and good[0] in result.stdout
  assert _cli(f'--workdir={run_dir}', *bad).returncode == 1
