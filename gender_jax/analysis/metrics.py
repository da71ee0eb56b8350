"""Binary classification metrics of male logits against 0/1 labels, in plain numpy."""
import numpy as np

from gender_jax.analysis import stats
from gender_jax import LABELS

INTERVAL_SEED = 0  # Fixed, so the same predictions always get the same intervals.


def roc_curve(labels, scores):
  """False and true positive rates over all thresholds (ties kept together), from (0, 0)."""
  labels, scores = np.asarray(labels), np.asarray(scores)
  order = np.argsort(-scores, kind='stable')
  scores, labels = scores[order], labels[order]
  # The last index of each run of equal scores: a threshold between distinct scores.
  ends = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
  tps = np.cumsum(labels)[ends]
  fps = (ends + 1) - tps
  tpr = np.r_[0.0, tps / max(labels.sum(), 1)]
  fpr = np.r_[0.0, fps / max(len(labels) - labels.sum(), 1)]
  return fpr, tpr


def roc_auc(labels, scores):
  """Area under the ROC curve (trapezoids, so ties count one half); NaN with one class only."""
  if labels.min() == labels.max():
    return float('nan')
  fpr, tpr = roc_curve(labels, scores)
  return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


sigmoid = stats.sigmoid  # P(male) of logits, without overflow: one definition, in stats.


def with_interval(m, key, separator=' '):
  """A metric of `m` (classification_metrics) to 4 decimals and, where recorded, its 95%
  bootstrap interval: '0.9120 [0.9000, 0.9233]'."""
  interval = (m.get('intervals') or {}).get(key)
  return f'{m[key]:.4f}' + (f'{separator}[{interval[0]:.4f}, {interval[1]:.4f}]' if interval
                            else '')


def classification_metrics(labels, logits):
  """Accuracy, balanced accuracy, precision, recall, F1 (male = positive), ROC AUC, loss, confusion matrix, counts.

  'intervals' holds 95% percentile bootstrap intervals ([low, high], 1000 resamples of the
  examples, seeded) of accuracy, balanced accuracy and ROC AUC: how far the test set's size
  alone lets them move.

  Takes logits rather than probabilities: the loss stays exact and ROC ranks stay untied where
  a float32 sigmoid would saturate. A logit >= 0 (P(male) >= 0.5) predicts male.
  """
  labels = np.asarray(labels).astype(np.int64)
  logits = np.asarray(logits, dtype=np.float64)
  predicted = (logits >= 0).astype(np.int64)
  confusion = np.zeros((2, 2), np.int64)  # rows: true female/male; columns: predicted.
  np.add.at(confusion, (labels, predicted), 1)
  (tn, fp), (fn, tp) = confusion
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  loss = np.mean(np.logaddexp(0, logits) - labels * logits)  # Binary cross-entropy.
  per_class = {name: float(confusion[c, c] / confusion[c].sum()) if confusion[c].sum() else
               float('nan') for c, name in enumerate(LABELS)}
  return {
      'accuracy': float((tn + tp) / len(labels)),
      # The mean of the per-class accuracies: chance is 0.5 however unbalanced the folder.
      'balanced_accuracy': float(np.nanmean(list(per_class.values()))),
      'precision': float(precision),
      'recall': float(recall),
      'f1': float(f1),
      'roc_auc': roc_auc(labels, logits),
      'loss': float(loss),
      'confusion_matrix': confusion.tolist(),
      'per_class_accuracy': per_class,
      'num_examples': int(len(labels)),
      'num_female': int((labels == 0).sum()),
      'num_male': int((labels == 1).sum()),
      'intervals': {k: list(v) for k, v in
                    stats.bootstrap_intervals(labels, logits, seed=INTERVAL_SEED).items()},
  }
