"""Statistics that tell a real difference from noise: bootstrap intervals, paired tests,
calibration and per-group metrics, in plain numpy.

Every resampling function draws from numpy.random.default_rng(seed), so a result is the same
on every machine for the same inputs and seed.
"""
import math

import numpy as np

INTERVAL_METRICS = ('accuracy', 'balanced_accuracy', 'roc_auc')
CALIBRATION_BINS = 15  # Equal-width bins of P(male) for the calibration error.
# Resampled indices held at once: bounds memory (8 bytes each) on large evaluation sets.
_CHUNK_ELEMENTS = 1 << 22


def _resample_chunks(n, num_samples, seed):
  """Yields (rows, n) index arrays, num_samples rows in all, drawn with replacement.

  The chunk size depends on n only, so the draws (and the result) depend on the seed alone.
  """
  rng = np.random.default_rng(seed)
  rows = max(1, _CHUNK_ELEMENTS // max(n, 1))
  for start in range(0, num_samples, rows):
    yield rng.integers(0, n, size=(min(rows, num_samples - start), n))


def _score_ranks(scores):
  """Index of each score among the distinct scores, ascending (tied scores share one)."""
  distinct, inverse = np.unique(np.asarray(scores, np.float64), return_inverse=True)
  return inverse.reshape(-1), len(distinct)


def _auc_from_counts(positives, negatives):
  """Mann-Whitney AUC from positives and negatives per distinct score (ascending, last axis).

  Midranks give tied scores the mean of their ranks, so a tied (male, female) pair counts one
  half; NaN where a class is absent.
  """
  counts = positives + negatives
  midranks = np.cumsum(counts, axis=-1) - (counts - 1) / 2
  num_pos, num_neg = positives.sum(axis=-1), negatives.sum(axis=-1)
  u = np.sum(positives * midranks, axis=-1) - num_pos * (num_pos + 1) / 2
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(num_pos * num_neg > 0, u / (num_pos * num_neg), np.nan)


def rank_auc(labels, scores):
  """ROC AUC as the Mann-Whitney U statistic over midranks; NaN with one class only."""
  labels = np.asarray(labels).astype(np.int64)
  ranks, k = _score_ranks(scores)
  return float(_auc_from_counts(np.bincount(ranks[labels == 1], minlength=k),
                                np.bincount(ranks[labels == 0], minlength=k)))


def _resampled_aucs(index, labels, ranks, k):
  """AUC of each row of resampled indices: counts per (row, class, distinct score) in one go."""
  rows = index.shape[0]
  keys = (np.arange(rows)[:, None] * 2 + labels[index]) * k + ranks[index]
  counts = np.bincount(keys.ravel(), minlength=rows * 2 * k).reshape(rows, 2, k)
  return _auc_from_counts(counts[:, 1], counts[:, 0])


def _resampled_accuracies(index, labels, correct):
  """(accuracy, balanced accuracy) of each row; a class absent from a row is left out."""
  hits = correct[index]
  males = labels[index] == 1
  num_male = males.sum(axis=1)
  num_female = index.shape[1] - num_male
  male_hits = np.sum(hits & males, axis=1)
  female_hits = hits.sum(axis=1) - male_hits
  with np.errstate(invalid='ignore', divide='ignore'):
    per_class = np.stack([female_hits / num_female, male_hits / num_male])
  return hits.mean(axis=1), np.nanmean(per_class, axis=0)


def _percentiles(values, level):
  """The percentile interval of the finite values; (nan, nan) when there are none."""
  values = values[np.isfinite(values)]
  if not len(values):
    return float('nan'), float('nan')
  tail = 100 * (1 - level) / 2
  low, high = np.percentile(values, [tail, 100 - tail])
  return float(low), float(high)


def bootstrap_intervals(labels, logits, num_samples=1000, seed=0, level=0.95):
  """Percentile bootstrap intervals over examples: {'accuracy', 'balanced_accuracy', 'roc_auc'}
  -> (low, high). A logit >= 0 predicts male, as in metrics.classification_metrics."""
  labels = np.asarray(labels).astype(np.int64)
  logits = np.asarray(logits, np.float64)
  correct = (logits >= 0).astype(np.int64) == labels
  ranks, k = _score_ranks(logits)
  samples = {name: [] for name in INTERVAL_METRICS}
  for index in _resample_chunks(len(labels), num_samples, seed):
    accuracy, balanced = _resampled_accuracies(index, labels, correct)
    samples['accuracy'].append(accuracy)
    samples['balanced_accuracy'].append(balanced)
    samples['roc_auc'].append(_resampled_aucs(index, labels, ranks, k))
  return {name: _percentiles(np.concatenate(v), level) for name, v in samples.items()}


def paired_bootstrap_auc_difference(labels, logits_a, logits_b, num_samples=1000, seed=0,
                                    level=0.95):
  """AUC(a) - AUC(b) on the same examples, with a percentile interval and a two-sided p-value
  from resampling the examples both models scored: {difference, low, high, p_value}."""
  labels = np.asarray(labels).astype(np.int64)
  ranks_a, ranks_b = _score_ranks(logits_a), _score_ranks(logits_b)
  difference = rank_auc(labels, logits_a) - rank_auc(labels, logits_b)
  diffs = np.concatenate([_resampled_aucs(index, labels, *ranks_a) -
                          _resampled_aucs(index, labels, *ranks_b)
                          for index in _resample_chunks(len(labels), num_samples, seed)])
  diffs = diffs[np.isfinite(diffs)]
  low, high = _percentiles(diffs, level)
  if not len(diffs) or not np.isfinite(difference):
    p_value = float('nan')
  elif difference == 0:
    p_value = 1.0
  else:
    # Resamples at 0 or beyond, on the side opposite the observed difference.
    other_side = diffs <= 0 if difference > 0 else diffs >= 0
    p_value = min(1.0, 2 * float(np.mean(other_side)))
  return {'difference': float(difference), 'low': low, 'high': high, 'p_value': p_value}


def binomial_cdf_half(k, n):
  """P[X <= k] for X ~ Binomial(n, 1/2), exactly: integer sums, one rounding at the end."""
  if k < 0:
    return 0.0
  return sum(math.comb(n, i) for i in range(min(k, n) + 1)) / 2 ** n


def mcnemar_exact(correct_a, correct_b):
  """McNemar's exact test of two classifiers on the same examples: {b, c, p_value}.

  b: a right where b is wrong; c: the reverse. Two-sided p = min(1, 2 P[X <= min(b, c)]) for
  X ~ Binomial(b + c, 1/2); 1 without discordant pairs.
  """
  correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
  if correct_a.shape != correct_b.shape:
    raise ValueError(f'correct_a and correct_b differ in shape: {correct_a.shape} vs '
                     f'{correct_b.shape}; the test needs the same examples.')
  b = int(np.sum(correct_a & ~correct_b))
  c = int(np.sum(~correct_a & correct_b))
  p_value = 1.0 if b + c == 0 else min(1.0, 2 * binomial_cdf_half(min(b, c), b + c))
  return {'b': b, 'c': c, 'p_value': p_value}


def sigmoid(logits):
  """P(male) of male logits, in float64; exactly 0 or 1 where |logits| is large."""
  logits = np.asarray(logits, np.float64)
  # Below a logit of -709, exp(-logits) overflows to inf and 1 / (1 + inf) is the exact limit,
  # 0: the one form is accurate everywhere, so only the warning is silenced.
  with np.errstate(over='ignore'):
    return 1 / (1 + np.exp(-logits))


def mean_sd(values):
  """Mean and sample standard deviation (0 for a single value)."""
  values = np.asarray(values, np.float64)
  return values.mean(), (values.std(ddof=1) if len(values) > 1 else 0.0)


def reliability_bins(labels, probabilities, num_bins=CALIBRATION_BINS):
  """Equal-width bins of P(male) on [0, 1]: {'edges', 'count', 'mean_p_male', 'fraction_male'}.

  Bin i holds [edges[i], edges[i+1]) (the last includes 1). A calibrated model's fraction_male
  (the share of males in the bin) equals its mean_p_male; both are NaN in an empty bin.
  """
  labels = np.asarray(labels, np.float64)
  probabilities = np.asarray(probabilities, np.float64)
  edges = np.linspace(0, 1, num_bins + 1)
  bins = np.clip(np.searchsorted(edges, probabilities, side='right') - 1, 0, num_bins - 1)
  count = np.bincount(bins, minlength=num_bins)
  with np.errstate(invalid='ignore', divide='ignore'):
    mean_p = np.bincount(bins, probabilities, minlength=num_bins) / count
    fraction = np.bincount(bins, labels, minlength=num_bins) / count
  return {'edges': edges, 'count': count, 'mean_p_male': mean_p, 'fraction_male': fraction}


def expected_calibration_error(labels, probabilities, num_bins=CALIBRATION_BINS):
  """Sum over bins of P(male) of (share of examples) x |fraction male - mean P(male)|."""
  bins = reliability_bins(labels, probabilities, num_bins)
  gaps = np.abs(bins['fraction_male'] - bins['mean_p_male'])
  weights = bins['count'] / max(bins['count'].sum(), 1)
  return float(np.sum(np.where(bins['count'] > 0, weights * gaps, 0.0)))


def binary_nll(labels, logits):
  """Mean negative log-likelihood of 0/1 labels under sigmoid(logits)."""
  labels = np.asarray(labels, np.float64)
  logits = np.asarray(logits, np.float64)
  return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


def fit_temperature(labels, logits, low=1e-2, high=1e2):
  """The temperature T in [low, high] minimising the NLL of sigmoid(logits / T).

  The NLL is convex in 1/T, so its derivative is monotone: bisection on log(1/T) finds the
  minimum (or the bound it lies beyond: a set the logits separate perfectly wants T -> 0).
  """
  labels = np.asarray(labels, np.float64)
  logits = np.asarray(logits, np.float64)
  slope = lambda beta: np.mean(logits * (sigmoid(beta * logits) - labels))
  lo, hi = math.log(1 / high), math.log(1 / low)
  if slope(math.exp(lo)) >= 0:
    return high
  if slope(math.exp(hi)) <= 0:
    return low
  for _ in range(100):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if slope(math.exp(mid)) < 0 else (lo, mid)
  return float(1 / math.exp((lo + hi) / 2))


def logits_from_probabilities(p_male):
  """Logits back from P(male) rounded to 6 decimals (a predictions CSV's): 0 and 1 are clipped
  to 1e-6 from either end, so they stay finite."""
  p = np.clip(p_male, 1e-6, 1 - 1e-6)
  return np.log(p) - np.log1p(-p)


def calibration(labels, p_male, valid_labels=None, valid_p_male=None,
                num_bins=CALIBRATION_BINS):
  """ECE and NLL of P(male), and after temperature scaling fitted on validation predictions.

  Returns {'ece', 'nll', 'temperature'}; temperature is None without validation predictions,
  else the fitted T, with 'scaled_p_male', 'scaled_ece' and 'scaled_nll' of the logits / T.
  """
  logits = logits_from_probabilities(p_male)
  result = {'ece': expected_calibration_error(labels, p_male, num_bins),
            'nll': binary_nll(labels, logits), 'temperature': None}
  if valid_p_male is not None:
    temperature = fit_temperature(valid_labels, logits_from_probabilities(valid_p_male))
    scaled = sigmoid(logits / temperature)
    result.update(temperature=temperature, scaled_p_male=scaled,
                  scaled_ece=expected_calibration_error(labels, scaled, num_bins),
                  scaled_nll=binary_nll(labels, logits / temperature))
  return result


def _accuracies(labels, correct):
  """(accuracy, balanced accuracy): the mean over the classes present, as metrics does."""
  per_class = [correct[labels == c].mean() for c in (0, 1) if np.any(labels == c)]
  return float(correct.mean()), float(np.mean(per_class))


def group_metrics(labels, logits, groups, min_count=20, order=None):
  """Accuracy per group, and the largest accuracy gap between groups of >= min_count examples.

  Returns {'groups': {group: {'count', 'accuracy', 'balanced_accuracy', 'accuracy_interval'}},
  'largest_gap': {'gap', 'highest', 'lowest', 'min_count'} or None when fewer than two groups
  are that large}. accuracy_interval is the group's 95% bootstrap interval ([low, high], seed
  0): a small group's accuracy moves a lot by chance. Groups named in `order` come first, in
  that order, then the rest sorted.
  """
  labels = np.asarray(labels).astype(np.int64)
  logits = np.asarray(logits, np.float64)
  correct = (logits >= 0).astype(np.int64) == labels
  groups = np.asarray([str(g) for g in groups])
  order = [g for g in order or () if np.any(groups == g)]
  names = order + sorted(set(groups) - set(order))
  table = {}
  for name in names:
    member = groups == name
    accuracy, balanced = _accuracies(labels[member], correct[member])
    low, high = bootstrap_intervals(labels[member], logits[member])['accuracy']
    table[name] = {'count': int(member.sum()), 'accuracy': accuracy,
                   'balanced_accuracy': balanced, 'accuracy_interval': [low, high]}
  large = {g: m['accuracy'] for g, m in table.items() if m['count'] >= min_count}
  gap = None
  if len(large) >= 2:
    highest, lowest = max(large, key=large.get), min(large, key=large.get)
    gap = {'gap': large[highest] - large[lowest], 'highest': highest, 'lowest': lowest,
           'min_count': min_count}
  return {'groups': table, 'largest_gap': gap}
