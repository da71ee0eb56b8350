"""The comparison report: report.md and its figures from trained run directories.

Usage: python -m gender_jax.report RUN_DIR... [--out DIR] [--data_dir DIR] (--help: all flags)

A RUN_DIR is a run directory (it holds a run's results) or a study directory whose subfolders are
run directories; a study's study.json adds its skipped experiments, command and machine. This
module puts the sections in order: runs.py reads the runs, tables.py writes the markdown,
figures.py draws.
"""
import datetime
import functools
import json
import pathlib
import platform

from gender_jax.data import protocol
from gender_jax.report import figures
from gender_jax.report import runs as runs_lib
from gender_jax.report import tables
from gender_jax.training import trained_run

FIGURES = 'figures'  # The folder of figures beside report.md.
PAIRED_FILE = 'paired_tests.json'


def _figure(out, name, plot, *args):
  """Draws plot(*args, path) into the figures folder; returns the lines that show it."""
  plot(*args, out / FIGURES / f'{name}.png')
  return [f'![{name}]({FIGURES}/{name}.png)', '']


def _sweep_section(runs, out, dirs, summaries=()):
  """The data-efficiency figure (when a series has several sizes) and the mean ± sd table; the
  runs' curves also into SWEEP_SUMMARY. `summaries`: curves measured elsewhere, drawn beside."""
  groups = runs_lib.sweep_groups(runs)
  if not summaries and all(len(sizes) == 1 and len(next(iter(sizes.values()))) == 1
                           for sizes in groups.values()):
    return []  # One run per model: the results table says it all.
  if groups:
    source = f'the runs in {", ".join(map(str, dirs))}'
    (out / runs_lib.SWEEP_SUMMARY).write_text(
        json.dumps(runs_lib.sweep_summary(groups, source), indent=2))
  lines = ['## Data efficiency', '']
  if any(len(sizes) > 1 for sizes in groups.values()) or any(
      len(curve.sizes) > 1 for curve in summaries):
    lines += _figure(out, 'data_efficiency',
                     functools.partial(figures.plot_data_efficiency, summaries=summaries), groups)
  return lines + tables.sweep_section(groups, summaries)


def _image_sections(runs, out, grid_per_class, num_mistakes):
  """Test image grids: a shared sample, and each run's most confident mistakes."""
  missing = {run.name: runs_lib.missing_images(run) for run in runs}
  shown = [run for run in runs if missing[run.name] is None]
  notes = [f'- {name}: images not shown: {why}.' for name, why in missing.items() if why]
  sections = {
      'test_samples': ('## Test predictions',
                       'The same seeded sample of test images for every run (half female, half '
                       'male): predicted label and P(male); mistakes framed in red.',
                       {run.name: figures.sample_indices(run, grid_per_class) for run in shown},
                       'no test images'),
      'confident_mistakes': ('## Most confident mistakes',
                             f'Each run\'s {num_mistakes} mistakes with the highest probability '
                             'on the wrong class.',
                             {run.name: figures.confident_mistakes(run, num_mistakes)
                              for run in shown},
                             'no mistakes'),
  }
  lines = []
  for name, (heading, text, indices, empty) in sections.items():
    lines += [heading, '', text, ''] + notes + ([''] if notes else [])
    if shown:
      figures.plot_image_grid(shown, indices, out / FIGURES / f'{name}.png', empty)
      lines += [f'![{name}]({FIGURES}/{name}.png)', '']
  return lines


def _model_inputs(run, data_dir=None):
  """The run's trained model and its test images as the model saw them, by path.

  Loaded here, not in figures.py: figures only draw, and the report's imports stay shallow.
  """
  trained = trained_run.load_trained(run.workdir)
  if data_dir:
    trained.config.data_dir = str(data_dir)
  split = protocol.load_splits(trained.config, splits=('test',)).splits['test']
  return trained, {path: image for path, image in zip(split.paths, split.images)}


def _saliency_section(runs, out, per_kind, data_dir=None):
  """Grad-CAM of right and wrong test faces, with a note for each run that could not be shown."""
  notes = figures.plot_saliency(runs, per_kind, out / FIGURES / 'saliency.png',
                                functools.partial(_model_inputs, data_dir=data_dir))
  lines = ['## What the models look at', '',
           f'Grad-CAM of the predicted class on the base\'s last feature map, over the model\'s '
           f'own input (the aligned face where the run aligns): {per_kind} test faces it gets '
           f'right (a seeded sample), then its {per_kind} most confident mistakes. Red: the '
           'regions whose features pushed the prediction most.', ''] + notes
  if len(notes) < len(runs):
    lines += ['', f'![saliency]({FIGURES}/saliency.png)']
  return lines + ['']


def write_report(dirs, out, data_dir=None, grid_per_class=4, num_mistakes=8,
                 temperature_scaling=False, saliency_per_kind=4, sweep_summaries=()):
  """Writes out/report.md and out/figures/*.png for the runs in `dirs`; returns report.md's path.

  `data_dir` replaces the runs' own data folder (to show test images on another machine);
  `temperature_scaling` shows each run's P(male) after the temperature fitted on its valid split;
  `sweep_summaries`: SWEEP_SUMMARY files whose curves the data-efficiency figure and table show
  beside the runs' own (sweeps measured elsewhere, whose runs are not here).
  """
  summaries = [c for path in sweep_summaries for c in runs_lib.load_sweep_summary(path)]
  study = runs_lib.load_study(dirs)
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
  lines += _sweep_section(runs, out, dirs, summaries)
  lines += tables.setup_section(study)
  lines += ['', '## Results', '', tables.comparison_table(study), '']
  if any(run.results['metrics'].get('intervals') for run in runs):
    lines += ['Accuracy and ROC AUC carry their 95% bootstrap interval over the test images '
              '(runs that recorded one).', '']
  if len(runs) > len(runs_lib.detail_runs(runs)):
    runs = runs_lib.detail_runs(runs)
    lines += ['The sections below show one run per model, its largest training set at its first '
              'seed: ' + ', '.join(run.name for run in runs) + '.', '']
  tests, unpaired = runs_lib.paired_tests(runs)
  (out / PAIRED_FILE).write_text(json.dumps(tests, indent=2))
  if len(runs) >= 2:
    lines += tables.paired_section(tests, unpaired)
  lines += tables.groups_section(runs, out / FIGURES)
  calibrations = {run.name: runs_lib.calibration(run) for run in runs}
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
    lines += tables.calibration_section(runs, calibrations)
    lines += _figure(out, 'reliability', figures.plot_reliability, runs, calibrations)
    sections = {'learning_curves': ('## Learning curves', figures.plot_learning_curves),
                'confusion_roc': ('## Confusion matrices and ROC curves',
                                  figures.plot_confusion_and_roc)}
    for name, (heading, plot) in sections.items():
      lines += [heading, ''] + _figure(out, name, plot, runs)
    lines += _image_sections(runs, out, grid_per_class, num_mistakes)
    if saliency_per_kind:
      lines += _saliency_section(runs, out, saliency_per_kind, data_dir)
  path = out / 'report.md'
  path.write_text('\n'.join(lines) + '\n')
  return path
