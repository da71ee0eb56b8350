"""Classification metrics against hand-computed values."""
import numpy as np
import pytest

from gender_jax.analysis import metrics
from gender_jax.analysis import stats


def test_counts_precision_recall_f1_by_hand():
  labels = np.array([0, 0, 0, 1, 1, 1])
  logits = np.array([-2.0, 0.5, -3.0, 3.0, -1.0, 1.0])  # One mistake per class.
  m = metrics.classification_metrics(labels, logits)
  assert m['confusion_matrix'] == [[2, 1], [1, 2]]
  assert m['accuracy'] == pytest.approx(4 / 6)
  assert m['precision'] == pytest.approx(2 / 3)
  assert m['recall'] == pytest.approx(2 / 3)
  assert m['f1'] == pytest.approx(2 / 3)
  assert m['per_class_accuracy'] == {'female': pytest.approx(2 / 3), 'male': pytest.approx(2 / 3)}
  assert (m['num_examples'], m['num_female'], m['num_male']) == (6, 3, 3)


def test_roc_auc_counts_ranked_pairs_and_ties_as_half():
  labels = np.array([0, 0, 0, 1, 1, 1])
  assert metrics.roc_auc(labels, np.array([-2.0, 0.5, -3.0, 3.0, -1.0, 1.0])) == (
      pytest.approx(8 / 9))  # 8 of the 9 (male, female) pairs are ranked right.
  assert metrics.roc_auc(np.array([0, 1]), np.array([1.0, 1.0])) == pytest.approx(0.5)


def test_loss_is_binary_cross_entropy_of_logits():
  labels, logits = np.array([0, 1]), np.array([0.0, 40.0])
  expected = (np.log(2) + np.log1p(np.exp(-40.0))) / 2
  assert metrics.classification_metrics(labels, logits)['loss'] == pytest.approx(expected)


def test_logit_zero_predicts_male():
  m = metrics.classification_metrics(np.array([1]), np.array([0.0]))
  assert m['confusion_matrix'] == [[0, 0], [0, 1]]


def test_balanced_accuracy_is_the_mean_of_per_class_accuracies():
  labels = np.array([0, 0, 0, 0, 1])
  logits = np.array([-1.0, -1.0, -1.0, -1.0, -1.0])  # All female: 4/5 right, but chance-level.
  m = metrics.classification_metrics(labels, logits)
  assert m['accuracy'] == pytest.approx(0.8)
  assert m['balanced_accuracy'] == pytest.approx(0.5)


def test_metrics_carry_seeded_bootstrap_intervals_of_accuracy_balanced_accuracy_and_auc():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 200)
  logits = rng.normal(size=200) + 2 * labels - 1
  m = metrics.classification_metrics(labels, logits)
  assert set(m['intervals']) == {'accuracy', 'balanced_accuracy', 'roc_auc'}
  for key, (low, high) in m['intervals'].items():
    assert low < m[key] < high, key
  assert m['intervals'] == metrics.classification_metrics(labels, logits)['intervals']
  assert m['intervals'] == {k: list(v) for k, v in stats.bootstrap_intervals(
      labels, logits, seed=metrics.INTERVAL_SEED).items()}
