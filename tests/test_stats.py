"""Bootstrap intervals, paired tests, calibration and group metrics against references, and
evaluate's per-group metrics from a labels CSV."""
import csv
import json
import pathlib
import subprocess
import sys
import warnings

import numpy as np
from PIL import Image
import pytest

from conftest import write_synthetic_faces
from gender_jax.analysis import groups as groups_lib
from gender_jax.analysis import metrics
from gender_jax.analysis import stats
from gender_jax import evaluate
from gender_jax.report import document
from gender_jax.training import trained_run

REPO = pathlib.Path(__file__).resolve().parents[1]


def _scored(n, seed, ties=True):
  """Labels and logits that rank males higher, rounded so many scores tie."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  logits = rng.normal(size=n) + 1.2 * labels - 0.3
  return labels, np.round(logits, 1) if ties else logits


def _reference_bootstrap(labels, logits, num_samples, seed):
  """The same resamples, one at a time, with metrics.roc_auc: (accuracy, balanced, auc) rows."""
  index = np.random.default_rng(seed).integers(0, len(labels), size=(num_samples, len(labels)))
  rows = []
  for i in index:
    y, correct = labels[i], (logits[i] >= 0) == labels[i]
    per_class = [correct[y == c].mean() for c in (0, 1) if np.any(y == c)]
    rows.append((correct.mean(), np.mean(per_class), metrics.roc_auc(y, logits[i])))
  return np.array(rows)


# --- ROC AUC by ranks ----------------------------------------------------------------------


@pytest.mark.parametrize('seed', range(5))
def test_rank_auc_equals_the_roc_curve_area_with_ties(seed):
  labels, logits = _scored(200, seed)
  assert len(np.unique(logits)) < 100  # Many ties.
  assert stats.rank_auc(labels, logits) == pytest.approx(metrics.roc_auc(labels, logits),
                                                         abs=1e-12)


def test_rank_auc_counts_a_tied_pair_as_half_and_is_nan_with_one_class():
  assert stats.rank_auc([0, 1], [1.0, 1.0]) == 0.5
  assert stats.rank_auc([0, 0, 1], [0.0, 2.0, 1.0]) == 0.5
  assert np.isnan(stats.rank_auc([1, 1], [0.0, 1.0]))


# --- Bootstrap intervals -------------------------------------------------------------------


def test_bootstrap_intervals_are_percentiles_of_the_resampled_metrics():
  labels, logits = _scored(60, seed=1)
  got = stats.bootstrap_intervals(labels, logits, num_samples=300, seed=7, level=0.9)
  expected = np.percentile(_reference_bootstrap(labels, logits, 300, seed=7), [5, 95], axis=0)
  for column, name in enumerate(stats.INTERVAL_METRICS):
    assert got[name] == pytest.approx(tuple(expected[:, column]), abs=1e-12), name


def test_bootstrap_is_reproducible_from_the_seed():
  labels, logits = _scored(300, seed=2)
  first = stats.bootstrap_intervals(labels, logits, seed=3)
  assert stats.bootstrap_intervals(labels, logits, seed=3) == first
  assert stats.bootstrap_intervals(labels, logits, seed=4) != first


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_more_examples():
  widths = []
  for n in (100, 3000):
    labels, logits = _scored(n, seed=5, ties=False)
    m = metrics.classification_metrics(labels, logits)
    intervals = stats.bootstrap_intervals(labels, logits)
    for name, (low, high) in intervals.items():
      assert low < m[name] < high, (n, name)
    widths.append(intervals['accuracy'][1] - intervals['accuracy'][0])
  assert widths[1] < widths[0] / 3  # About 1 / sqrt(30) as wide.


def test_bootstrap_of_a_perfect_classifier_is_a_point():
  labels = np.array([0, 1] * 20)
  intervals = stats.bootstrap_intervals(labels, labels * 2.0 - 1, num_samples=50)
  assert intervals == {name: (1.0, 1.0) for name in stats.INTERVAL_METRICS}


# --- McNemar -------------------------------------------------------------------------------


def _pairs(b, c, both=5, neither=3):
  """correct_a, correct_b with b examples only a gets right and c only b gets right."""
  a = [True] * b + [False] * c + [True] * both + [False] * neither
  other = [False] * b + [True] * c + [True] * both + [False] * neither
  return np.array(a), np.array(other)


@pytest.mark.parametrize('b, c', [(0, 1), (0, 5), (3, 9), (9, 3), (10, 10), (11, 10), (1, 30),
                                  (40, 62), (400, 470), (1200, 1100)])
def test_mcnemar_exact_matches_scipy_binomtest(b, c):
  scipy_stats = pytest.importorskip('scipy.stats')
  got = stats.mcnemar_exact(*_pairs(b, c))
  assert (got['b'], got['c']) == (b, c)
  expected = scipy_stats.binomtest(b, b + c, 0.5, alternative='two-sided').pvalue
  assert got['p_value'] == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mcnemar_by_hand_and_without_discordant_pairs():
  assert stats.mcnemar_exact(*_pairs(0, 5))['p_value'] == pytest.approx(2 / 32)
  assert stats.mcnemar_exact(*_pairs(0, 0)) == {'b': 0, 'c': 0, 'p_value': 1.0}


def test_binomial_cdf_is_exact_far_into_the_tail():
  scipy_stats = pytest.importorskip('scipy.stats')
  for k, n in [(0, 1), (3, 10), (100, 1000), (900, 2000), (1000, 2000), (2000, 2000)]:
    assert stats.binomial_cdf_half(k, n) == pytest.approx(scipy_stats.binom.cdf(k, n, 0.5),
                                                          rel=1e-9, abs=1e-300)


# --- Paired AUC bootstrap ------------------------------------------------------------------


def test_paired_auc_difference_matches_resampling_both_models_on_the_same_examples():
  labels, a = _scored(80, seed=8)
  b = np.round(a + np.random.default_rng(9).normal(size=80), 1)  # A noisier model.
  got = stats.paired_bootstrap_auc_difference(labels, a, b, num_samples=200, seed=4)
  index = np.random.default_rng(4).integers(0, 80, size=(200, 80))
  diffs = np.array([metrics.roc_auc(labels[i], a[i]) - metrics.roc_auc(labels[i], b[i])
                    for i in index])
  assert got['difference'] == pytest.approx(metrics.roc_auc(labels, a) - metrics.roc_auc(labels, b))
  assert (got['low'], got['high']) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
  assert got['difference'] > 0
  assert got['p_value'] == pytest.approx(min(1, 2 * np.mean(diffs <= 0)))


def test_paired_difference_of_a_model_with_itself_is_zero_with_p_one():
  labels, a = _scored(100, seed=10)
  got = stats.paired_bootstrap_auc_difference(labels, a, a)
  assert got == {'difference': 0.0, 'low': 0.0, 'high': 0.0, 'p_value': 1.0}


def test_paired_difference_turns_sign_when_the_models_swap():
  labels, a = _scored(150, seed=11)
  b = a + np.random.default_rng(12).normal(size=150)
  ab = stats.paired_bootstrap_auc_difference(labels, a, b, seed=1)
  ba = stats.paired_bootstrap_auc_difference(labels, b, a, seed=1)
  assert ba['difference'] == pytest.approx(-ab['difference'])
  assert (ba['low'], ba['high']) == pytest.approx((-ab['high'], -ab['low']))
  assert ba['p_value'] == pytest.approx(ab['p_value'])


def test_a_clearly_better_model_gets_a_small_p_and_an_interval_above_zero():
  labels, good = _scored(1000, seed=13, ties=False)
  bad = good + 3 * np.random.default_rng(14).normal(size=1000)
  got = stats.paired_bootstrap_auc_difference(labels, good, bad)
  assert got['low'] > 0 and got['p_value'] < 0.01


# --- Calibration ---------------------------------------------------------------------------


def test_expected_calibration_error_by_hand():
  labels = [0, 0, 1, 1, 1, 0]
  p = [0.05, 0.15, 0.55, 0.95, 0.85, 0.9]
  # [0, .5): mean P .1, no males: gap .1 over 2 of 6; [.5, 1]: mean P .8125, 3 of 4 male.
  expected = 2 / 6 * 0.1 + 4 / 6 * abs(0.75 - 0.8125)
  assert stats.expected_calibration_error(labels, p, num_bins=2) == pytest.approx(expected)


def test_reliability_bins_count_mean_and_fraction_per_equal_width_bin():
  bins = stats.reliability_bins([0, 1, 1, 0, 1], [0.0, 0.2, 0.25, 0.5, 1.0], num_bins=4)
  np.testing.assert_allclose(bins['edges'], [0, 0.25, 0.5, 0.75, 1])
  # 0.25 opens bin 1; 1.0 falls in the last.
  np.testing.assert_array_equal(bins['count'], [2, 1, 1, 1])
  np.testing.assert_allclose(bins['mean_p_male'], [0.1, 0.25, 0.5, 1.0])
  np.testing.assert_allclose(bins['fraction_male'], [0.5, 1.0, 0.0, 1.0])
  empty = stats.reliability_bins([1], [0.9], num_bins=15)
  assert empty['count'].sum() == 1 and np.isnan(empty['mean_p_male'][0])


def test_calibrated_predictions_have_no_calibration_error():
  # In each bin, the share of males equals the mean P(male).
  labels = [1, 0, 0, 0, 1, 1, 1, 0]
  p = [0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75]
  assert stats.expected_calibration_error(labels, p, num_bins=10) == pytest.approx(0)
  assert stats.expected_calibration_error([1, 0], [0.0, 1.0], num_bins=15) == pytest.approx(1)


# --- Group metrics -------------------------------------------------------------------------


def _grouped():
  """x: 15 female all right, 5 male 1 right; y: 10 female 9 right, 15 male all right; z: 3 wrong."""
  labels = [0] * 15 + [1] * 5 + [0] * 10 + [1] * 15 + [0, 1, 1]
  right = [1] * 15 + [1] + [0] * 4 + [1] * 9 + [0] + [1] * 15 + [0, 0, 0]
  logits = [(1.0 if y else -1.0) * (1 if r else -1) for y, r in zip(labels, right)]
  groups = ['x'] * 20 + ['y'] * 25 + ['z'] * 3
  return np.array(labels), np.array(logits), groups


def test_group_metrics_by_hand():
  got = stats.group_metrics(*_grouped())
  table = {g: (m['count'], m['accuracy'], m['balanced_accuracy'])
           for g, m in got['groups'].items()}
  assert table == {'x': (20, pytest.approx(0.8), pytest.approx((1 + 0.2) / 2)),
                   'y': (25, pytest.approx(0.96), pytest.approx((0.9 + 1) / 2)),
                   'z': (3, 0.0, 0.0)}
  # z is too small to count: the gap is between y and x.
  assert got['largest_gap'] == {'gap': pytest.approx(0.16), 'highest': 'y', 'lowest': 'x',
                                'min_count': 20}
  for m in got['groups'].values():
    low, high = m['accuracy_interval']
    assert low <= m['accuracy'] <= high


def test_group_gap_needs_two_large_groups_and_order_is_kept():
  labels, logits, groups = _grouped()
  assert stats.group_metrics(labels, logits, groups, min_count=21)['largest_gap'] is None
  got = stats.group_metrics(labels, logits, groups, min_count=3, order=['z', 'y'])
  assert list(got['groups']) == ['z', 'y', 'x']
  assert got['largest_gap']['gap'] == pytest.approx(0.96)


# --- evaluate --labels_csv -----------------------------------------------------------------

AGES = [25] * 22 + [41] * 22 + [85] * 6  # Groups of 22, 22 and 6 (too small for the gap).


@pytest.fixture(scope='module')
def eval_folder(tmp_path_factory):
  """A flat {female,male} folder of 25 + 25 images and its labels.csv (age, race)."""
  root = write_synthetic_faces(tmp_path_factory.mktemp('eval'), counts={'test': 25}, seed=3)
  folder = root / 'test'
  relpaths = sorted(str(p.relative_to(folder)) for p in folder.glob('*/*.jpg'))
  rows = [{'relpath': p, 'male': int(p.startswith('male')), 'age': age,
           'race': 'black' if i % 2 else 'white'} for i, (p, age) in enumerate(zip(relpaths, AGES))]
  rows.append({'relpath': 'female/left_out.jpg', 'male': 0, 'age': 30, 'race': 'white'})
  write_csv(root / 'labels.csv', rows)
  return folder, root / 'labels.csv', rows[:-1]


def write_csv(path, rows, fields=('relpath', 'male', 'age', 'race')):
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fields, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)


def test_decades_bin_ages():
  assert [groups_lib.decade(a) for a in (18, 19.5, 20, 29, 35, 79, 80, 116)] == [
      '<20', '<20', '20-29', '20-29', '30-39', '70-79', '80+', '80+']
  assert groups_lib.column_groups(['30', '', '85'])[0] == ['30-39', 'unknown', '80+']
  assert groups_lib.column_groups(['white', 'asian', ''])[0] == ['white', 'asian', 'unknown']


def test_groups_are_the_metrics_of_each_csv_column(run_dir, eval_folder, monkeypatch):
  folder, labels_csv, rows = eval_folder
  # Predictions by hand, in the folder's (sorted path) order: the first 10 images are wrong.
  logits = np.array([1.0 if r['male'] else -1.0 for r in rows])
  logits[:10] *= -1
  monkeypatch.setattr(trained_run, 'predict_logits', lambda *_: logits)
  result = evaluate.evaluate(str(run_dir), folder=str(folder), labels_csv=str(labels_csv))
  age, race = result['groups']['age'], result['groups']['race']
  assert {g: m['count'] for g, m in age['groups'].items()} == {'20-29': 22, '40-49': 22, '80+': 6}
  assert age['groups']['20-29']['accuracy'] == pytest.approx(12 / 22)
  assert age['groups']['40-49']['accuracy'] == 1.0
  assert age['largest_gap'] == {'gap': pytest.approx(10 / 22), 'highest': '40-49',
                                'lowest': '20-29', 'min_count': 20}
  assert race['groups']['white']['accuracy'] == race['groups']['black']['accuracy'] == 0.8
  saved = json.loads((run_dir / 'eval_folder_test.json').read_text())
  assert saved['groups'] == json.loads(json.dumps(result['groups']))
  with Image.open(run_dir / 'eval_folder_test_groups.png') as image:
    assert image.size[0] > 100 and np.asarray(image.convert('L')).std() > 0
  table = evaluate.format_table(result)
  assert 'by age: largest accuracy gap 0.4545 (40-49 vs 20-29' in table
  assert '  80+' in table and '  white' in table


def test_report_shows_each_evaluations_groups(run_dir, eval_folder, monkeypatch, tmp_path):
  folder, labels_csv, rows = eval_folder
  logits = np.array([1.0 if r['male'] else -1.0 for r in rows])
  logits[:10] *= -1
  monkeypatch.setattr(trained_run, 'predict_logits', lambda *_: logits)
  evaluate.evaluate(str(run_dir), folder=str(folder), labels_csv=str(labels_csv))
  text = document.write_report([run_dir], tmp_path, saliency_per_kind=0).read_text()
  section = text[text.index('## Accuracy by group'):text.index('## Calibration')]
  assert 'By age: largest accuracy gap 0.4545 (40-49 vs 20-29' in section
  assert '| 20-29 | 22 | 0.5455 [' in section and '| white | 25 | 0.8000 [' in section
  assert f'(figures/{run_dir.name}_eval_folder_test_groups.png)' in section
  assert (tmp_path / 'figures' / f'{run_dir.name}_eval_folder_test_groups.png').is_file()


def test_evaluate_command_line_prints_groups_and_intervals(run_dir, eval_folder):
  folder, labels_csv, _ = eval_folder
  done = subprocess.run(
      [sys.executable, '-m', 'gender_jax.evaluate', f'--workdir={run_dir}', f'--folder={folder}',
       f'--labels_csv={labels_csv}'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((run_dir / 'eval_folder_test.json').read_text())
  m = result['metrics']
  assert m['num_examples'] == 50
  low, high = m['intervals']['accuracy']
  line = next(l for l in done.stdout.splitlines() if l.startswith('  accuracy '))
  assert line.endswith(f"{m['accuracy']:.4f}  [{low:.4f}, {high:.4f}]")
  assert 'by age:' in done.stdout and 'by race:' in done.stdout
  counts = {g: x['count'] for g, x in result['groups']['race']['groups'].items()}
  assert counts == {'black': 25, 'white': 25}


def _one_line_error(run_dir, folder, labels_csv):
  done = subprocess.run(
      [sys.executable, '-m', 'gender_jax.evaluate', f'--workdir={run_dir}', f'--folder={folder}',
       f'--labels_csv={labels_csv}'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode != 0
  last = done.stderr.strip().splitlines()[-1]  # After absl's and orbax's log lines.
  assert last.startswith('error: ') and 'Traceback' not in done.stderr, done.stderr[-3000:]
  return last


def test_a_csv_without_relpath_is_a_one_line_error(run_dir, eval_folder, tmp_path):
  folder, _, rows = eval_folder
  bad = tmp_path / 'no_relpath.csv'
  write_csv(bad, [{'path': r['relpath'], 'male': r['male']} for r in rows], ('path', 'male'))
  error = _one_line_error(run_dir, folder, bad)
  assert str(bad) in error and "no 'relpath' column" in error


def test_a_csv_of_other_images_is_an_error_naming_what_was_expected(run_dir, eval_folder,
                                                                    tmp_path):
  folder, _, rows = eval_folder
  bad = tmp_path / 'other_root.csv'
  write_csv(bad, [{**r, 'relpath': 'test/' + r['relpath']} for r in rows])
  with pytest.raises(groups_lib.LabelsCsvError, match=r'50 of 50 images .* have no row'):
    evaluate.evaluate(str(run_dir), folder=str(folder), labels_csv=str(bad))
  error = _one_line_error(run_dir, folder, bad)
  assert str(bad) in error and 'relative to' in error


def test_a_csv_whose_labels_disagree_with_the_folder_is_an_error(run_dir, eval_folder, tmp_path):
  folder, _, rows = eval_folder
  bad = tmp_path / 'flipped.csv'
  write_csv(bad, [{**r, 'male': 1 - r['male']} if i < 3 else r for i, r in enumerate(rows)])
  with pytest.raises(groups_lib.LabelsCsvError, match=r"'male' column disagrees .* for 3 images"):
    evaluate.evaluate(str(run_dir), folder=str(folder), labels_csv=str(bad))


def test_labels_csv_needs_a_folder(run_dir, eval_folder):
  with pytest.raises(groups_lib.LabelsCsvError, match='needs --folder'):
    evaluate.evaluate(str(run_dir), split='test', labels_csv=str(eval_folder[1]))


def test_fitted_temperature_minimises_the_nll_and_recovers_a_known_one():
  rng = np.random.default_rng(0)
  true_logits = rng.normal(0, 2, 20000)
  labels = (rng.random(20000) < 1 / (1 + np.exp(-true_logits))).astype(int)
  temperature = stats.fit_temperature(labels, 3.0 * true_logits)  # Overconfident by 3x.
  assert temperature == pytest.approx(3.0, rel=0.05)
  best = stats.binary_nll(labels, 3.0 * true_logits / temperature)
  for other in (temperature * 0.9, temperature * 1.1):
    assert best < stats.binary_nll(labels, 3.0 * true_logits / other)


def test_perfectly_separated_logits_want_the_smallest_temperature():
  assert stats.fit_temperature([0, 0, 1, 1], [-2.0, -1.0, 1.0, 3.0]) == 1e-2
  assert stats.fit_temperature([1, 1, 0, 0], [-2.0, -1.0, 1.0, 3.0]) == 1e2  # Wrong way round.


def test_sigmoid_of_large_logits_is_0_or_1_without_an_overflow_warning():
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    p = stats.sigmoid([-1e4, -800.0, 0.0, 800.0, 1e4])
  np.testing.assert_array_equal(p, [0.0, 0.0, 0.5, 1.0, 1.0])
  assert metrics.sigmoid is stats.sigmoid


def test_temperature_of_large_separated_logits_is_fitted_without_an_overflow_warning():
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert stats.fit_temperature([0, 1], [-1e3, 1e3]) == 1e-2


def test_calibration_scales_test_logits_by_the_temperature_fitted_on_validation():
  labels, logits = _scored(400, seed=5, ties=False)
  p = np.round(stats.sigmoid(3.0 * logits), 6)  # Overconfident, as a predictions CSV holds it.
  plain = stats.calibration(labels, p)
  assert plain == {'ece': stats.expected_calibration_error(labels, p),
                   'nll': stats.binary_nll(labels, stats.logits_from_probabilities(p)),
                   'temperature': None}
  got = stats.calibration(labels, p, labels, p)
  assert got['temperature'] == stats.fit_temperature(labels, stats.logits_from_probabilities(p))
  assert got['temperature'] > 1 and got['scaled_nll'] < got['nll']
  np.testing.assert_allclose(
      got['scaled_p_male'], stats.sigmoid(stats.logits_from_probabilities(p) / got['temperature']))
