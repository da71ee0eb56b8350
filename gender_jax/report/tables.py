"""The report's markdown: the setup, the comparison table, sweeps, paired tests, groups and
calibration, each as a list of lines."""
import pathlib

from gender_jax.analysis import metrics
from gender_jax.analysis import stats
from gender_jax import LABELS
from gender_jax.report import runs as runs_lib


def _seconds(s):
  return '' if s is None else f'{s:.1f}'


# --- Setup ---------------------------------------------------------------------------------


def setup_section(study):
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
        f"| {run.name} | {runs_lib.when(run)} | {machine} | "
        f"{r.get('devices')} | `{r.get('data_dir')}` | "
        f"{c.get('num_train')}/{c.get('num_valid')}/{c.get('num_test')} | "
        f"{c.get('image_size')} ({c.get('resize')}) | {runs_lib.faces(c)} | "
        f"{r.get('num_epochs')} | {c.get('batch_size')} | {c.get('learning_rate')} | "
        f"{r.get('git_commit')} | `{command}` |")
  lines += ['', 'Metrics are on the test split (male = positive class, P(male) >= 0.5 predicts '
            'male) with the best-validation-accuracy checkpoint. Train time is the training loop '
            'only; total time includes data loading, feature caching and evaluation.', '']
  lines += ['Weights of each base:', '']
  for run in study.runs:
    w = run.results.get('weights')
    sha = runs_lib.weights_sha256(w)
    if sha and not w.get('random_base'):
      lines.append(f"- {run.name}: `{w.get('source')}`, sha256 of its source file `{sha}`")
    else:
      lines.append(f'- {run.name}: {runs_lib.weights_provenance(w)}')
  return lines


# --- Results -------------------------------------------------------------------------------


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
        metrics.with_interval(m, 'accuracy'),
        *(f'{m[k]:.4f}' for k in ('precision', 'recall', 'f1')),
        metrics.with_interval(m, 'roc_auc'),
        *(f"{m['per_class_accuracy'][c]:.4f}" for c in LABELS),
        f"{r['params']['trainable']:,}", f"{r['params']['total']:,}",
        _seconds(r.get('train_seconds')), _seconds(r.get('total_seconds')),
        f"{r.get('train_images_per_second', float('nan')):.1f}",
        f"{r.get('best_epoch')}/{r.get('num_epochs')}",
        runs_lib.weights_provenance(r.get('weights'))])
  for model in study.skipped:
    rows.append([model, model, 'skipped (see below)'] + [''] * (len(header) - 3))
  for name, how_far in study.unfinished.items():
    rows.append([name, '', f'unfinished ({how_far})'] + [''] * (len(header) - 3))
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
  return '\n'.join(lines)


# --- Sweeps: sizes and seeds ---------------------------------------------------------------


def _sweep_row(series, size, point, cell):
  """A sweep table's row of one SWEEP_SUMMARY point; cell(mean, sd) writes a metric's."""
  seeds = point['seeds']
  seeds = ','.join(map(str, seeds)) if isinstance(seeds, list) else f'{seeds} seeds'
  cells = [cell(*point[m]) if m in point else '' for m in runs_lib.SUMMARY_METRICS]
  seconds = point.get('train_seconds')
  return (f'| {series} | {size} | {seeds} | {" | ".join(cells)} | '
          f'{"" if seconds is None else f"{seconds:.0f}"} |')


def sweep_table(groups, summaries=()):
  """Markdown rows of mean ± sd over seeds per series and training-set size (the sweep summary
  of the runs, as SWEEP_SUMMARY records it); then the rows of `summaries` (curves measured
  elsewhere, runs_lib.SummaryCurve), marked †."""
  lines = ['| Model | Train images | Seeds | Test accuracy | Test balanced accuracy | '
           'Test ROC AUC | Best valid accuracy | Train time (s) |', '|' + '---|' * 8]
  for series, sizes in runs_lib.sweep_summary(groups, source='')['series'].items():
    for size, point in sizes.items():
      single = len(point['seeds']) == 1
      lines.append(_sweep_row(series, size, point, lambda mean, sd, single=single: (
          f'{mean:.4f}' if single else f'{mean:.4f} ± {sd:.4f}')))
  for curve in summaries:
    for size, point in curve.sizes.items():
      # As precise as the source gives them, up to 4 significant digits.
      lines.append(_sweep_row(f'{curve.series}†', size, point,
                              lambda mean, sd: f'{mean:.4g} ± {sd:.4g}'))
  return '\n'.join(lines)


def sweep_section(groups, summaries=()):
  """The sweep's mean ± sd table and how to read it (below the data-efficiency figure)."""
  notes = ['Mean ± sample standard deviation over training seeds (initialisation, order and '
           'jitter); every point is scored on the same test images. Faint dots: single runs.']
  for curve in summaries:
    notes.append(f'† {curve.series}: not runs read here, but the means and sds given by '
                 f'{curve.source} (--sweep_summary), drawn dashed with open markers.')
  return [sweep_table(groups, summaries), ''] + [line for note in notes for line in (note, '')]


# --- Paired tests --------------------------------------------------------------------------


def _p(p_value, num_samples=None):
  """A p-value for the table; a bootstrap p of 0 only says it is below 2 / num_samples."""
  if num_samples and p_value == 0:
    return f'< {2 / num_samples:g}'
  return f'{p_value:.3g}'


def paired_section(tests, unpaired):
  """The markdown section of runs.paired_tests: a row per pair of runs."""
  lines = ['## Paired tests', '',
           'Runs scored on the same test images, compared image by image. McNemar\'s exact test '
           'asks whether the images only one run gets right split unevenly between them '
           '(two-sided binomial test on those images); the paired bootstrap resamples the images '
           f'{runs_lib.BOOTSTRAP_SAMPLES} times (seed {runs_lib.BOOTSTRAP_SEED}) for the '
           'difference in ROC AUC, with its 95% interval. p-values are not corrected for the '
           'number of pairs.', '']
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


def groups_section(runs, figures_dir):
  """Accuracy per group (age, race, ...) of every evaluation that had a labels CSV; each
  evaluation's figure is copied into figures_dir, a folder beside report.md."""
  lines = []
  for run in runs:
    for name, result in runs_lib.group_evaluations(run).items():
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
        (figures_dir / copy).write_bytes(figure.read_bytes())
        lines += [f'![{copy}]({figures_dir.name}/{copy})', '']
  if not lines:
    return []
  return ['## Accuracy by group', '',
          'From `python -m gender_jax.evaluate --workdir=RUN --folder=FOLDER --labels_csv=CSV`: '
          'each column of the CSV splits the images into groups.', ''] + lines


# --- Calibration ---------------------------------------------------------------------------


def calibration_section(runs, calibrations):
  """ECE and NLL per run, as trained and temperature-scaled (above the reliability figure)."""
  lines = ['## Calibration', '',
           f'Expected calibration error ({stats.CALIBRATION_BINS} equal-width bins of P(male)) '
           'and negative log-likelihood on the test split, as trained and after dividing the '
           'logits by one temperature fitted on the validation split (which leaves accuracy and '
           'ROC AUC unchanged).', '',
           '| Run | Test ECE | Test NLL | Temperature | Test ECE, scaled | Test NLL, scaled |',
           '|' + '---|' * 6]
  for run in runs:
    c = calibrations[run.name]
    scaled = (f"{c['temperature']:.3f} | {c['scaled_ece']:.4f} | {c['scaled_nll']:.4f}"
              if c['temperature'] is not None else 'no validation predictions | | ')
    lines.append(f"| {run.name} | {c['ece']:.4f} | {c['nll']:.4f} | {scaled} |")
  return lines + ['']
