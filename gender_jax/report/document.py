"""The comparison report: a markdown table and figures from trained run directories.

Usage: python -m gender_jax.report RUN_DIR... [--out DIR] [--data_dir DIR]

A RUN_DIR is a run directory (it holds a run's results) or a study directory whose subfolders are
run directories; a study's study.json adds its skipped experiments, command and machine.
"""
import dataclasses
import datetime
import json
import pathlib
import platform

import matplotlib
matplotlib.use('Agg')  # Files only: no display on servers and in tests.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from PIL import Image

from gender_jax.analysis import metrics
from gender_jax.analysis import saliency
from gender_jax.analysis import stats
from gender_jax.data import protocol
from gender_jax import LABELS
from gender_jax.training import run_dir
from gender_jax.training import trained_run

FIGURES = 'figures'
PAIRED_FILE = 'paired_tests.json'
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclasses.dataclass
class Run:
  """What one run directory holds, as the report needs it."""
  name: str
  workdir: pathlib.Path
  results: dict
  history: list  # One dict per epoch, from the run's metrics (run_dir.read_metrics).
  paths: list  # Test images, relative to data_dir.
  labels: np.ndarray  # 0/1 per test image.
  p_male: np.ndarray
  entry: dict = dataclasses.field(default_factory=dict)  # Its study.json entry, if any.
  # Validation labels and P(male) of the best checkpoint (what calibration is fitted on); None
  # for runs trained before they were kept.
  valid_labels: np.ndarray | None = None
  valid_p_male: np.ndarray | None = None

  @property
  def predicted(self):
    return (self.p_male >= 0.5).astype(np.int64)

  @property
  def data_dir(self):
    return pathlib.Path(self.results.get('data_dir') or '')

  @property
  def series(self):
    """What the run is a point of: its model in a study sweep ('custom/train250_seed0'), else
    itself."""
    return self.name.split('/')[0]

  @property
  def train_images(self):
    """How many images it trained on: its protocol's train list, else the config's num_train."""
    listed = self.workdir / 'protocol' / 'train.txt'
    if listed.exists():
      return sum(1 for line in listed.read_text().splitlines() if line)
    return self.results['config']['num_train']

  @property
  def train_seed(self):
    config = self.results['config']
    return config['seed'] if config.get('train_seed', -1) == -1 else config['train_seed']

  @property
  def best_valid_accuracy(self):
    return max((e['valid_accuracy'] for e in self.history), default=float('nan'))


@dataclasses.dataclass
class Study:
  """Run directories to compare, and what study.json files say about the runs they hold."""
  runs: list
  skipped: dict  # Model -> reason, for experiments a study skipped.
  unfinished: dict  # Run -> how far it got ('epoch 3 of 10'), for runs without results.
  studies: list  # (directory, study.json contents).


def load_run(workdir):
  """Reads a finished run directory (gender_jax/training/run_dir.py says what it holds)."""
  workdir = pathlib.Path(workdir)
  paths, labels, p_male = run_dir.read_predictions(workdir, 'test')
  _, valid_labels, valid_p_male = run_dir.read_predictions(workdir, 'valid') or (None,) * 3
  return Run(name=workdir.name, workdir=workdir,
             results=run_dir.read_json(workdir / run_dir.RESULTS),
             history=run_dir.read_metrics(workdir), paths=paths, labels=labels, p_male=p_male,
             valid_labels=valid_labels, valid_p_male=valid_p_male)


def load_study(dirs):
  """Finds the run directories in `dirs` (runs, or studies holding runs) and reads them."""
  runs, skipped, unfinished, studies = [], {}, {}, []
  for d in map(pathlib.Path, dirs):
    if (d / run_dir.CONFIG).exists():
      entries = {d: (d.name, {})}
    elif not d.is_dir():
      raise run_dir.NoRunError(f'{d} is not a run directory nor a study directory.')
    elif (d / run_dir.STUDY).exists():
      study = run_dir.read_json(d / run_dir.STUDY)
      studies.append((d, study))
      entries = {d / e['workdir']: (name, e) for name, e in study['experiments'].items()}
      skipped.update({name: e['reason'] for name, e in study['experiments'].items()
                      if e['status'] == 'skipped'})
    else:
      entries = {p: (p.name, {}) for p in sorted(d.iterdir()) if p.is_dir()}
    for subdir, (name, entry) in entries.items():
      if (subdir / run_dir.RESULTS).exists():
        runs.append(dataclasses.replace(load_run(subdir), name=name, entry=entry))
      elif (subdir / run_dir.CONFIG).exists():
        unfinished[name] = run_dir.status(subdir)
  if not runs and not skipped and not unfinished:
    raise run_dir.NoRunError(f'No run directories (with {run_dir.CONFIG}) in '
                            f'{", ".join(map(str, dirs))}.')
  return Study(runs=runs, skipped=skipped, unfinished=unfinished, studies=studies)


# --- Table ---------------------------------------------------------------------------------


def weights_provenance(weights):
  """Where the base's weights came from, in one table cell; a random base is said loudly."""
  if not weights:
    return 'none (trained from scratch)'
  if weights.get('random_base'):
    return '**RANDOM BASE (NOT PRETRAINED)**'
  sha = weights.get('h5_sha256') or ''
  return f"{weights.get('source', '?')} (sha256 {sha[:12]})"


def _seconds(s):
  return '' if s is None else f'{s:.1f}'


def _with_interval(m, key):
  """A metric and, from runs that recorded it, its 95% bootstrap interval."""
  interval = (m.get('intervals') or {}).get(key)
  return f'{m[key]:.4f}' + (f' [{interval[0]:.4f}, {interval[1]:.4f}]' if interval else '')


def comparison_table(study):
  """The markdown table: test metrics, size, speed and weights of each run; skips as rows."""
  header = ['Run', 'Model', 'Test images', 'Accuracy', 'Precision', 'Recall', 'F1', 'ROC AUC',
            'Female acc.', 'Male acc.', 'Trainable params', 'Total params', 'Train time (s)',
            'Total time (s)', 'Train images/s', 'Best epoch', 'Weights']
  rows = []
  for run in study.runs:
    r, m = run.results, run.results['metrics']
    rows.append([
        run.name, r['model'], str(m['num_examples']),
        _with_interval(m, 'accuracy'), *(f'{m[k]:.4f}' for k in ('precision', 'recall', 'f1')),
        _with_interval(m, 'roc_auc'),
        *(f"{m['per_class_accuracy'][c]:.4f}" for c in LABELS),
        f"{r['params']['trainable']:,}", f"{r['params']['total']:,}",
        _seconds(r.get('train_seconds')), _seconds(r.get('total_seconds')),
        f"{r.get('train_images_per_second', float('nan')):.1f}",
        f"{r.get('best_epoch')}/{r.get('num_epochs')}", weights_provenance(r.get('weights'))])
  for model in study.skipped:
    rows.append([model, model, 'skipped (see below)'] + [''] * (len(header) - 3))
  for name, how_far in study.unfinished.items():
    rows.append([name, '', f'unfinished ({how_far})'] + [''] * (len(header) - 3))
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
  return '\n'.join(lines)


# --- Sweeps: sizes and seeds ---------------------------------------------------------------


def detail_runs(runs):
  """One run per series, shown in the per-run sections: its largest training set, first seed."""
  chosen = {}
  for run in runs:
    best = chosen.get(run.series)
    if best is None or (-run.train_images, run.train_seed) < (-best.train_images,
                                                               best.train_seed):
      chosen[run.series] = run
  return list(chosen.values())


def sweep_groups(runs):
  """{series: {train images: [runs over seeds]}}, sizes ascending."""
  groups = {}
  for run in runs:
    groups.setdefault(run.series, {}).setdefault(run.train_images, []).append(run)
  return {series: dict(sorted(sizes.items())) for series, sizes in groups.items()}


def _mean_sd(values):
  """Mean and sample standard deviation (0 for a single value)."""
  values = np.asarray(values, np.float64)
  return values.mean(), (values.std(ddof=1) if len(values) > 1 else 0.0)


def _format_mean_sd(values):
  mean, sd = _mean_sd(values)
  return f'{mean:.4f} ± {sd:.4f}' if len(values) > 1 else f'{mean:.4f}'


def sweep_table(groups):
  """Markdown rows of mean ± sd over seeds per series and training-set size."""
  lines = ['| Model | Train images | Seeds | Test accuracy | Test balanced accuracy | '
           'Test ROC AUC | Best valid accuracy | Train time (s) |', '|' + '---|' * 8]
  for series, sizes in groups.items():
    for size, runs in sizes.items():
      seeds = ','.join(str(r.train_seed) for r in sorted(runs, key=lambda r: r.train_seed))
      m = [r.results['metrics'] for r in runs]
      lines.append(
          f'| {series} | {size} | {seeds} | {_format_mean_sd([x["accuracy"] for x in m])} | '
          f'{_format_mean_sd([x.get("balanced_accuracy", np.nan) for x in m])} | '
          f'{_format_mean_sd([x["roc_auc"] for x in m])} | '
          f'{_format_mean_sd([r.best_valid_accuracy for r in runs])} | '
          f'{np.mean([r.results.get("train_seconds", np.nan) for r in runs]):.0f} |')
  return '\n'.join(lines)


def plot_data_efficiency(groups, path):
  """Test accuracy and ROC AUC against training-set size: mean over seeds, bars of one sd."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, metric, title in zip(axes, ('accuracy', 'roc_auc'), ('test accuracy', 'test ROC AUC')):
    for i, (series, sizes) in enumerate(groups.items()):
      xs = np.array(list(sizes))
      values = [[r.results['metrics'][metric] for r in runs] for runs in sizes.values()]
      for x, v in zip(xs, values):
        ax.plot([x] * len(v), v, '.', color=f'C{i}', alpha=0.35)
      means, sds = zip(*map(_mean_sd, values))
      ax.errorbar(xs, means, yerr=sds, marker='o', capsize=4, color=f'C{i}',
                  label=f'{series} ({max(map(len, values))} seeds)')
    ax.set_xscale('log')
    ax.set_xticks(sorted({x for sizes in groups.values() for x in sizes}))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set(xlabel='training images', ylabel=metric, title=f'{title} (mean ± sd over seeds)')
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8, loc='lower right')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def sweep_section(runs, out):
  """The data-efficiency figure (when a series has several sizes) and the mean ± sd table."""
  groups = sweep_groups(runs)
  if all(len(sizes) == 1 and len(next(iter(sizes.values()))) == 1 for sizes in groups.values()):
    return []  # One run per model: the results table says it all.
  lines = ['## Data efficiency', '']
  if any(len(sizes) > 1 for sizes in groups.values()):
    plot_data_efficiency(groups, out / FIGURES / 'data_efficiency.png')
    lines += [f'![data_efficiency]({FIGURES}/data_efficiency.png)', '']
  lines += [sweep_table(groups), '',
            'Mean ± sample standard deviation over training seeds (initialisation, order and '
            'jitter); every point is scored on the same test images. Faint dots: single runs.', '']
  return lines


# --- Paired tests --------------------------------------------------------------------------


def _by_path(run):
  """The run's test examples in path order, so two runs' arrays line up example by example."""
  order = np.argsort(run.paths, kind='stable')
  return [run.paths[i] for i in order], run.labels[order], run.p_male[order]


def paired_tests(runs, num_samples=BOOTSTRAP_SAMPLES, seed=BOOTSTRAP_SEED):
  """McNemar's exact test and the paired AUC bootstrap for every two runs scored on the same
  test images; returns (tests, [(run a, run b)] of pairs with different images)."""
  tests, unpaired = [], []
  for i, run_a in enumerate(runs):
    for run_b in runs[i + 1:]:
      paths_a, labels, p_a = _by_path(run_a)
      paths_b, labels_b, p_b = _by_path(run_b)
      if paths_a != paths_b or not np.array_equal(labels, labels_b):
        unpaired.append((run_a.name, run_b.name))
        continue
      correct_a, correct_b = (p_a >= 0.5) == labels, (p_b >= 0.5) == labels
      tests.append({
          'a': run_a.name, 'b': run_b.name, 'num_examples': len(labels),
          'accuracy_a': float(correct_a.mean()), 'accuracy_b': float(correct_b.mean()),
          'mcnemar': stats.mcnemar_exact(correct_a, correct_b),
          'auc_difference': stats.paired_bootstrap_auc_difference(labels, p_a, p_b,
                                                                  num_samples, seed),
          'bootstrap_samples': num_samples, 'bootstrap_seed': seed})
  return tests, unpaired


def _p(p_value, num_samples=None):
  """A p-value for the table; a bootstrap p of 0 only says it is below 2 / num_samples."""
  if num_samples and p_value == 0:
    return f'< {2 / num_samples:g}'
  return f'{p_value:.3g}'


def paired_section(tests, unpaired):
  """The markdown section of paired_tests: a row per pair of runs."""
  lines = ['## Paired tests', '',
           'Runs scored on the same test images, compared image by image. McNemar\'s exact test '
           'asks whether the images only one run gets right split unevenly between them '
           '(two-sided binomial test on those images); the paired bootstrap resamples the images '
           f'{BOOTSTRAP_SAMPLES} times (seed {BOOTSTRAP_SEED}) for the difference in ROC AUC, '
           'with its 95% interval. p-values are not corrected for the number of pairs.', '']
  if tests:
    lines += ['| Run A | Run B | Test images | Accuracy A | Accuracy B | A right, B wrong | '
              'A wrong, B right | McNemar exact p | ROC AUC A - B [95% CI] | Bootstrap p |',
              '|' + '---|' * 10]
    for t in tests:
      d, mc = t['auc_difference'], t['mcnemar']
      lines.append(
          f"| {t['a']} | {t['b']} | {t['num_examples']} | {t['accuracy_a']:.4f} | "
          f"{t['accuracy_b']:.4f} | {mc['b']} | {mc['c']} | {_p(mc['p_value'])} | "
          f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] | "
          f"{_p(d['p_value'], t['bootstrap_samples'])} |")
  else:
    lines.append('No two runs were scored on the same test images.')
  lines += [''] + [f'- {a} and {b}: not compared, their test images differ.'
                   for a, b in unpaired]
  return lines + ([''] if unpaired else [])


# --- Groups of people ------------------------------------------------------------------------


def group_evaluations(run):
  """The run's evaluations with per-group metrics (evaluate --labels_csv), by file name."""
  found = {}
  for path in sorted(run.workdir.glob('eval_*.json')):
    result = json.loads(path.read_text())
    if result.get('groups'):
      found[path.stem] = result
  return found


def groups_section(runs, out):
  """Accuracy per group (age, race, ...) of every evaluation that had a labels CSV."""
  lines = []
  for run in runs:
    for name, result in group_evaluations(run).items():
      m = result['metrics']
      lines += [f"**{run.name}** on `{result['evaluated']}` ({m['num_examples']} images, "
                f"accuracy {m['accuracy']:.4f}, balanced accuracy "
                f"{m.get('balanced_accuracy', float('nan')):.4f}; labels "
                f"`{result.get('labels_csv')}`):", '']
      for column, g in result['groups'].items():
        gap = g['largest_gap']
        lines += [f"By {column}: " + (
            f"largest accuracy gap {gap['gap']:.4f} ({gap['highest']} vs {gap['lowest']}, "
            f"groups of at least {gap['min_count']} images)." if gap else
            'fewer than two groups large enough to compare.'), '',
                  f'| {column} | Images | Accuracy [95% CI] | Balanced accuracy |',
                  '|---|---|---|---|']
        for group, gm in g['groups'].items():
          low, high = gm['accuracy_interval']
          lines.append(f"| {group} | {gm['count']} | {gm['accuracy']:.4f} [{low:.4f}, "
                       f"{high:.4f}] | {gm['balanced_accuracy']:.4f} |")
        lines.append('')
      figure = pathlib.Path(result.get('groups_figure') or '')
      if figure.is_file():
        copy = f"{run.name.replace('/', '_')}_{name}_groups.png"
        (out / FIGURES / copy).write_bytes(figure.read_bytes())
        lines += [f'![{copy}]({FIGURES}/{copy})', '']
  if not lines:
    return []
  return ['## Accuracy by group', '',
          'From `python -m gender_jax.evaluate --workdir=RUN --folder=FOLDER --labels_csv=CSV`: '
          'each column of the CSV splits the images into groups.', ''] + lines


# --- Calibration ---------------------------------------------------------------------------

CALIBRATION_BINS = 15


def _logits(p_male):
  """Logits back from the 6-decimal probabilities of a predictions CSV."""
  p = np.clip(p_male, 1e-6, 1 - 1e-6)
  return np.log(p) - np.log1p(-p)


def calibration(run):
  """Test ECE and NLL as trained and after temperature scaling fitted on the validation split."""
  logits = _logits(run.p_male)
  result = {'ece': stats.expected_calibration_error(run.labels, run.p_male, CALIBRATION_BINS),
            'nll': stats.binary_nll(run.labels, logits), 'temperature': None}
  if run.valid_p_male is not None:
    temperature = stats.fit_temperature(run.valid_labels, _logits(run.valid_p_male))
    scaled = metrics.sigmoid(logits / temperature)
    result.update(temperature=temperature, scaled_p_male=scaled,
                  scaled_ece=stats.expected_calibration_error(run.labels, scaled,
                                                              CALIBRATION_BINS),
                  scaled_nll=stats.binary_nll(run.labels, logits / temperature))
  return result


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
      bins = stats.reliability_bins(run.labels, p, CALIBRATION_BINS)
      used = bins['count'] > 0
      ax.plot(bins['mean_p_male'][used], bins['fraction_male'][used], style, ms=4, label=label)
    ax.plot([0, 1], [0, 1], ':', color='gray')
    ax.set(xlabel='mean P(male) in bin', ylabel='fraction male', title=run.name,
           xlim=(0, 1), ylim=(0, 1), aspect='equal')
    ax.legend(fontsize=8, loc='upper left')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def calibration_section(runs, calibrations, out):
  lines = ['## Calibration', '',
           f'Expected calibration error ({CALIBRATION_BINS} equal-width bins of P(male)) and '
           'negative log-likelihood on the test split, as trained and after dividing the logits '
           'by one temperature fitted on the validation split (which leaves accuracy and ROC AUC '
           'unchanged).', '',
           '| Run | Test ECE | Test NLL | Temperature | Test ECE, scaled | Test NLL, scaled |',
           '|' + '---|' * 6]
  for run in runs:
    c = calibrations[run.name]
    scaled = (f"{c['temperature']:.3f} | {c['scaled_ece']:.4f} | {c['scaled_nll']:.4f}"
              if c['temperature'] is not None else 'no validation predictions | | ')
    lines.append(f"| {run.name} | {c['ece']:.4f} | {c['nll']:.4f} | {scaled} |")
  plot_reliability(runs, calibrations, out / FIGURES / 'reliability.png')
  return lines + ['', f'![reliability]({FIGURES}/reliability.png)', '']


# --- Figures -------------------------------------------------------------------------------


def _colors(runs):
  return {run.name: f'C{i}' for i, run in enumerate(runs)}


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
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


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
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


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
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# --- Report --------------------------------------------------------------------------------


def _missing_images(run):
  """Why this run's test images cannot be shown, or None when they all exist."""
  if not run.data_dir.is_dir():
    return f'data folder {run.data_dir} not found'
  missing = [p for p in run.paths if not (run.data_dir / p).exists()]
  return f'{len(missing)} test images missing in {run.data_dir}' if missing else None


def _when(run):
  finished = run.results.get('finished') or run.results.get('finished_utc')  # Before v2.
  if finished:
    return finished
  mtime = (run.workdir / run_dir.RESULTS).stat().st_mtime
  return datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).isoformat(
      timespec='seconds')


def _faces(config):
  """How the run's images became its inputs: whole, or aligned faces and the template's zoom."""
  align = config.get('face_align', 'none')
  return 'whole images' if align == 'none' else f"{align}-aligned, zoom {config.get('face_zoom')}"


def _setup_section(study):
  """What was measured, where, when, with which command and weights."""
  lines = ['## Setup', '']
  for directory, s in study.studies:
    lines += [f'Study `{directory}`, last run from {s.get("started")} to {s.get("finished")}: '
              f'`{s.get("command")}`', '']
  lines += ['| Run | Finished (UTC) | Machine | Devices | Data | Train/valid/test | Image size | '
            'Faces | Epochs | Batch | Learning rate | Git commit | Command |', '|' + '---|' * 13]
  for run in study.runs:
    r, c = run.results, run.results.get('config', {})
    command = r.get('command') or run.entry.get('command') or 'not recorded'
    machine = r.get('platform') or run.entry.get('machine', {}).get('platform', 'not recorded')
    lines.append(
        f"| {run.name} | {_when(run)} | {machine} | "
        f"{r.get('devices')} | `{r.get('data_dir')}` | "
        f"{c.get('num_train')}/{c.get('num_valid')}/{c.get('num_test')} | "
        f"{c.get('image_size')} ({c.get('resize')}) | {_faces(c)} | {r.get('num_epochs')} | "
        f"{c.get('batch_size')} | {c.get('learning_rate')} | {r.get('git_commit')} | "
        f"`{command}` |")
  lines += ['', 'Metrics are on the test split (male = positive class, P(male) >= 0.5 predicts '
            'male) with the best-validation-accuracy checkpoint. Train time is the training loop '
            'only; total time includes data loading, feature caching and evaluation.', '']
  lines += ['Weights of each base:', '']
  for run in study.runs:
    w = run.results.get('weights')
    if w and not w.get('random_base'):
      lines.append(f"- {run.name}: `{w.get('source')}`, h5 sha256 `{w.get('h5_sha256')}`")
    else:
      lines.append(f'- {run.name}: {weights_provenance(w)}')
  return lines


def write_report(dirs, out, data_dir=None, grid_per_class=4, num_mistakes=8,
                 temperature_scaling=False, saliency_per_kind=4):
  """Writes out/report.md and out/figures/*.png for the runs in `dirs`; returns report.md's path.

  `data_dir` replaces the runs' own data folder (to show test images on another machine);
  `temperature_scaling` shows each run's P(male) after the temperature fitted on its valid split.
  """
  study = load_study(dirs)
  if data_dir:
    for run in study.runs:
      run.results['data_dir'] = str(data_dir)
  out = pathlib.Path(out)
  (out / FIGURES).mkdir(parents=True, exist_ok=True)
  runs = study.runs
  now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
  lines = ['# Model comparison: facial gender classification', '',
           f'Report written {now} on {platform.platform()} from: '
           + ', '.join(f'`{d}`' for d in dirs) + '.', '']
  random_bases = [r.name for r in runs if (r.results.get('weights') or {}).get('random_base')]
  if random_bases:
    lines += [f'> **WARNING: {", ".join(random_bases)} ran on a RANDOM base, NOT pretrained '
              'weights. Those results say nothing about transfer learning.**', '']
  lines += sweep_section(runs, out)
  lines += _setup_section(study)
  lines += ['', '## Results', '', comparison_table(study), '']
  if any(run.results['metrics'].get('intervals') for run in runs):
    lines += ['Accuracy and ROC AUC carry their 95% bootstrap interval over the test images '
              '(runs that recorded one).', '']
  if len(runs) > len(detail_runs(runs)):
    runs = detail_runs(runs)
    lines += ['The sections below show one run per model, its largest training set at its first '
              'seed: ' + ', '.join(run.name for run in runs) + '.', '']
  tests, unpaired = paired_tests(runs)
  (out / PAIRED_FILE).write_text(json.dumps(tests, indent=2))
  if len(runs) >= 2:
    lines += paired_section(tests, unpaired)
  lines += groups_section(runs, out)
  calibrations = {run.name: calibration(run) for run in runs}
  if temperature_scaling:
    for run in runs:
      if calibrations[run.name]['temperature'] is not None:
        run.p_male = calibrations[run.name]['scaled_p_male']
    lines += ['P(male) below is temperature-scaled (see Calibration) where a run kept its '
              'validation predictions.', '']
  if study.skipped:
    lines += ['## Skipped experiments', '']
    for model, reason in study.skipped.items():
      lines += [f'- **{model}**: skipped.', '', '```', reason, '```', '']
  if runs:
    lines += calibration_section(runs, calibrations, out)
    figures = {'learning_curves': ('## Learning curves', plot_learning_curves),
               'confusion_roc': ('## Confusion matrices and ROC curves', plot_confusion_and_roc)}
    for name, (heading, plot) in figures.items():
      plot(runs, out / FIGURES / f'{name}.png')
      lines += [heading, '', f'![{name}]({FIGURES}/{name}.png)', '']
    lines += _image_sections(runs, out, grid_per_class, num_mistakes)
    if saliency_per_kind:
      lines += saliency_section(runs, out, saliency_per_kind, data_dir)
  path = out / 'report.md'
  path.write_text('\n'.join(lines) + '\n')
  return path


def saliency_indices(run, per_kind):
  """Test images to explain: a seeded sample of right answers, then the most confident mistakes."""
  right = np.flatnonzero(run.predicted == run.labels)
  right = np.random.default_rng(0).permutation(right)[:per_kind]
  return np.concatenate([right, confident_mistakes(run, per_kind)]).astype(int)


def _model_inputs(run, data_dir=None):
  """The run's trained model and its test images as the model saw them, by path."""
  trained = trained_run.load_trained(run.workdir)
  if data_dir:
    trained.config.data_dir = str(data_dir)
  split = protocol.load_splits(trained.config, splits=('test',))['test']
  return trained, {path: image for path, image in zip(split.paths, split.images)}


def plot_saliency(runs, per_kind, path, data_dir=None):
  """Grad-CAM over a row of right and wrong test faces per run; returns [why] for runs left out."""
  rows, notes = [], []
  for run in runs:
    try:
      trained, images = _model_inputs(run, data_dir)
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
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return notes


def saliency_section(runs, out, per_kind, data_dir=None):
  path = out / FIGURES / 'saliency.png'
  notes = plot_saliency(runs, per_kind, path, data_dir)
  lines = ['## What the models look at', '',
           f'Grad-CAM of the predicted class on the base\'s last feature map, over the model\'s '
           f'own input (the aligned face where the run aligns): {per_kind} test faces it gets '
           f'right (a seeded sample), then its {per_kind} most confident mistakes. Red: the '
           'regions whose features pushed the prediction most.', ''] + notes
  if len(notes) < len(runs):
    lines += ['', f'![saliency]({FIGURES}/saliency.png)']
  return lines + ['']


def _image_sections(runs, out, grid_per_class, num_mistakes):
  """Test image grids: a shared sample, and each run's most confident mistakes."""
  missing = {run.name: _missing_images(run) for run in runs}
  shown = [run for run in runs if missing[run.name] is None]
  notes = [f'- {name}: images not shown: {why}.' for name, why in missing.items() if why]
  sections = {
      'test_samples': ('## Test predictions',
                       'The same seeded sample of test images for every run (half female, half '
                       'male): predicted label and P(male); mistakes framed in red.',
                       {run.name: sample_indices(run, grid_per_class) for run in shown},
                       'no test images'),
      'confident_mistakes': ('## Most confident mistakes',
                             f'Each run\'s {num_mistakes} mistakes with the highest probability '
                             'on the wrong class.',
                             {run.name: confident_mistakes(run, num_mistakes) for run in shown},
                             'no mistakes'),
  }
  lines = []
  for name, (heading, text, indices, empty) in sections.items():
    lines += [heading, '', text, ''] + notes + ([''] if notes else [])
    if shown:
      plot_image_grid(shown, indices, out / FIGURES / f'{name}.png', empty)
      lines += [f'![{name}]({FIGURES}/{name}.png)', '']
  return lines
