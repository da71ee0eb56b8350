"""The report's figures: data efficiency, reliability, learning curves, confusion and ROC, test
image grids and Grad-CAM, each written to the path it is given."""
import matplotlib
matplotlib.use('Agg')  # Files only: no display on servers and in tests.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from PIL import Image

from gender_jax.analysis import metrics
from gender_jax.analysis import saliency
from gender_jax.analysis import stats
from gender_jax import LABELS


def _colors(runs):
  return {run.name: f'C{i}' for i, run in enumerate(runs)}


def _save(fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# --- Curves --------------------------------------------------------------------------------


def plot_data_efficiency(groups, path, summaries=()):
  """Test accuracy and ROC AUC against training-set size: mean over seeds, bars of one sd.

  `summaries` (runs_lib.SummaryCurve) are curves measured elsewhere, known by mean and sd only:
  dashed, with open markers and no single runs, their source in the legend.
  """
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  sizes_shown = sorted({x for sizes in groups.values() for x in sizes} |
                       {x for curve in summaries for x in curve.sizes})
  for ax, metric, title in zip(axes, ('accuracy', 'roc_auc'), ('test accuracy', 'test ROC AUC')):
    for i, (series, sizes) in enumerate(groups.items()):
      xs = np.array(list(sizes))
      values = [[r.results['metrics'][metric] for r in runs] for runs in sizes.values()]
      for x, v in zip(xs, values):
        ax.plot([x] * len(v), v, '.', color=f'C{i}', alpha=0.35)
      means, sds = zip(*map(stats.mean_sd, values))
      ax.errorbar(xs, means, yerr=sds, marker='o', capsize=4, color=f'C{i}',
                  label=f'{series} ({max(map(len, values))} seeds)')
    for i, curve in enumerate(summaries, start=len(groups)):
      xs = list(curve.sizes)
      means, sds = zip(*(curve.sizes[x][metric] for x in xs))
      seeds = max(curve.seeds(x) for x in xs)
      ax.errorbar(xs, means, yerr=sds, marker='s', fillstyle='none', linestyle='--', capsize=4,
                  color=f'C{i}', label=f'{curve.series} ({seeds} seeds; mean ± sd from '
                                       f'{curve.source})')
    ax.set_xscale('log')
    ax.set_xticks(sizes_shown)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set(xlabel='training images', ylabel=metric, title=f'{title} (mean ± sd over seeds)')
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8, loc='lower right')
  _save(fig, path)


def plot_reliability(runs, calibrations, path):
  """A reliability diagram per run: share of males against mean P(male) per bin, before and
  after temperature scaling; the diagonal is perfect calibration."""
  fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 4), squeeze=False)
  for ax, run in zip(axes[0], runs):
    c = calibrations[run.name]
    curves = [('as trained', run.p_male, '-o')]
    if c['temperature'] is not None:
      curves.append((f"T = {c['temperature']:.2f}", c['scaled_p_male'], '--s'))
    for label, p, style in curves:
      bins = stats.reliability_bins(run.labels, p, stats.CALIBRATION_BINS)
      used = bins['count'] > 0
      ax.plot(bins['mean_p_male'][used], bins['fraction_male'][used], style, ms=4, label=label)
    ax.plot([0, 1], [0, 1], ':', color='gray')
    ax.set(xlabel='mean P(male) in bin', ylabel='fraction male', title=run.name,
           xlim=(0, 1), ylim=(0, 1), aspect='equal')
    ax.legend(fontsize=8, loc='upper left')
  _save(fig, path)


def plot_learning_curves(runs, path):
  """Train (solid) and valid (dashed) loss and accuracy per epoch, all runs on shared axes."""
  colors = _colors(runs)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, metric in zip(axes, ('loss', 'accuracy')):
    for run in runs:
      epochs = [e['epoch'] for e in run.history]
      for split, style in (('train', '-'), ('valid', '--')):
        ax.plot(epochs, [e[f'{split}_{metric}'] for e in run.history], style, marker='.',
                color=colors[run.name], label=f'{run.name} {split}')
      best = run.results.get('best_epoch')
      if best in epochs:
        ax.plot(best, run.history[epochs.index(best)][f'valid_{metric}'], '*', ms=12,
                color=colors[run.name])
    ax.set(xlabel='epoch', ylabel=metric, title=f'{metric} (star: best valid epoch)')
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=8)
  _save(fig, path)


def plot_confusion_and_roc(runs, path):
  """A confusion matrix per run (counts and row percentages), then all ROC curves together."""
  colors = _colors(runs)
  fig, axes = plt.subplots(1, len(runs) + 1, figsize=(4 * (len(runs) + 1), 4), squeeze=False)
  axes = axes[0]
  for ax, run in zip(axes, runs):
    confusion = np.asarray(run.results['metrics']['confusion_matrix'])
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap='Blues', vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(confusion):
      ax.text(j, i, f'{count}\n{rates[i, j]:.1%}', ha='center', va='center',
              color='white' if rates[i, j] > 0.5 else 'black')
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=LABELS, yticklabels=LABELS,
           xlabel='predicted', ylabel='true', title=run.name)
  ax = axes[-1]
  for run in runs:
    fpr, tpr = metrics.roc_curve(run.labels, run.p_male)
    auc = run.results['metrics']['roc_auc']
    ax.plot(fpr, tpr, color=colors[run.name], label=f'{run.name} (AUC {auc:.4f})')
  ax.plot([0, 1], [0, 1], ':', color='gray')
  ax.set(xlabel='false positive rate (female called male)', ylabel='true positive rate',
         title='ROC, test set', aspect='equal')
  ax.legend(fontsize=8, loc='lower right')
  _save(fig, path)


# --- Test images ---------------------------------------------------------------------------


def sample_indices(run, per_class):
  """The same test images for every run that shares a protocol: seeded, per class."""
  order = np.argsort(run.paths)  # Independent of the CSV's row order.
  rng = np.random.default_rng(0)
  chosen = [rng.permutation(order[run.labels[order] == c])[:per_class] for c in (0, 1)]
  return np.concatenate(chosen)


def confident_mistakes(run, k):
  """Indices of the k mistakes made with the highest probability on the wrong class."""
  wrong = np.flatnonzero(run.predicted != run.labels)
  confidence = np.abs(run.p_male[wrong] - 0.5)
  return wrong[np.argsort(-confidence, kind='stable')[:k]]


def _show_image(ax, run, i):
  """One test image titled with the prediction; a mistake gets a red frame and title."""
  with Image.open(run.data_dir / run.paths[i]) as image:
    ax.imshow(image.convert('RGB'))
  mistake = run.predicted[i] != run.labels[i]
  color = 'red' if mistake else 'green'
  title = f'{LABELS[run.predicted[i]]} P(m)={run.p_male[i]:.2f}'
  if mistake:
    title += f'\nWRONG, true {LABELS[run.labels[i]]}'
  ax.set_title(title, fontsize=8, color=color)
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set(color=color, linewidth=4 if mistake else 1)


def plot_image_grid(runs, indices, path, empty='none'):
  """A row of test images per run (`indices[run.name]`); a row without any says `empty`."""
  columns = max(1, max(len(ix) for ix in indices.values()))
  fig, axes = plt.subplots(len(runs), columns, figsize=(1.6 * columns, 2.4 * len(runs)),
                           squeeze=False)
  for row, run in zip(axes, runs):
    for ax in row:
      ax.axis('off')
    for ax, i in zip(row, indices[run.name]):
      ax.axis('on')
      _show_image(ax, run, i)
    row[0].text(-0.15, 0.5, run.name, transform=row[0].transAxes, rotation=90,
                ha='right', va='center', fontsize=10, weight='bold')
    if not len(indices[run.name]):
      row[0].text(0.5, 0.5, empty, transform=row[0].transAxes, ha='center', va='center')
  _save(fig, path)


# --- Saliency ------------------------------------------------------------------------------


def saliency_indices(run, per_kind):
  """Test images to explain: a seeded sample of right answers, then the most confident mistakes."""
  right = np.flatnonzero(run.predicted == run.labels)
  right = np.random.default_rng(0).permutation(right)[:per_kind]
  return np.concatenate([right, confident_mistakes(run, per_kind)]).astype(int)


def plot_saliency(runs, per_kind, path, model_inputs):
  """Grad-CAM over a row of right and wrong test faces per run; returns [why] for runs left out.

  model_inputs(run) gives the run's trained model and its test images as the model saw them,
  by path.
  """
  rows, notes = [], []
  for run in runs:
    try:
      trained, images = model_inputs(run)
    except (OSError, ValueError) as e:  # No checkpoint, data or detector here: say so, go on.
      notes.append(f'- {run.name}: not shown: {str(e).splitlines()[0]}')
      continue
    indices = [i for i in saliency_indices(run, per_kind) if run.paths[i] in images]
    faces = np.stack([images[run.paths[i]] for i in indices]) if indices else None
    cams = (saliency.grad_cam(trained.model, trained.variables, faces) if indices else [])
    rows.append((run, indices, faces, cams))
  if not rows:
    return notes
  columns = max(1, max(len(r[1]) for r in rows))
  fig, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns, 2.2 * len(rows)),
                           squeeze=False)
  for row_axes, (run, indices, faces, cams) in zip(axes, rows):
    for ax in row_axes:
      ax.axis('off')
    for ax, i, face, cam in zip(row_axes, indices, faces if indices else [], cams):
      wrong = run.predicted[i] != run.labels[i]
      ax.imshow(saliency.overlay(face, cam))
      ax.set_title(f'{LABELS[run.predicted[i]]} P(m)={run.p_male[i]:.2f}' +
                   ('\nWRONG' if wrong else ''), fontsize=8, color='red' if wrong else 'green')
    row_axes[0].text(-0.15, 0.5, run.name, transform=row_axes[0].transAxes, rotation=90,
                     ha='right', va='center', fontsize=10, weight='bold')
  _save(fig, path)
  return notes
