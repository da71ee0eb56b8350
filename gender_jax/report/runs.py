"""The report's runs: run and study directories read, and what the report asks of a run.

gender_jax/training/run_dir.py says what a run directory holds; this module reads it for the
tables and figures, which only format.
"""
import dataclasses
import datetime
import json
import pathlib

import numpy as np

from gender_jax.analysis import stats
from gender_jax import UserError
from gender_jax.training import run_dir

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


# --- Setup facts ---------------------------------------------------------------------------


def weights_provenance(weights):
  """Where the base's weights came from, in one table cell; a random base is said loudly."""
  if not weights:
    return 'none (trained from scratch)'
  if weights.get('random_base'):
    return '**RANDOM BASE (NOT PRETRAINED)**'
  sha = weights_sha256(weights)
  return f"{weights.get('source', '?')}" + (f' (sha256 {sha[:12]})' if sha else '')


def weights_sha256(weights):
  """The sha256 of the file a run's base weights came from, as results.json records it."""
  return weights and (weights.get('sha256') or weights.get('h5_sha256'))  # Old runs: h5 only.


def when(run):
  """When the run finished (UTC, ISO): as recorded, else its results file's time."""
  finished = run.results.get('finished') or run.results.get('finished_utc')  # Before v2.
  if finished:
    return finished
  mtime = (run.workdir / run_dir.RESULTS).stat().st_mtime
  return datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).isoformat(
      timespec='seconds')


def faces(config):
  """How the run's images became its inputs: whole, or aligned faces and the template's zoom."""
  align = config.get('face_align', 'none')
  return 'whole images' if align == 'none' else f"{align}-aligned, zoom {config.get('face_zoom')}"


def missing_images(run):
  """Why this run's test images cannot be shown, or None when they all exist."""
  if not run.data_dir.is_dir():
    return f'data folder {run.data_dir} not found'
  missing = [p for p in run.paths if not (run.data_dir / p).exists()]
  return f'{len(missing)} test images missing in {run.data_dir}' if missing else None


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


# A sweep's curves as numbers: what report.md's sweep table shows, in SWEEP_SUMMARY beside it, so
# that a report elsewhere can draw them beside its own runs (--sweep_summary) where these runs
# are not. {'source': where the numbers come from, 'series': {series: {train images: {'seeds':
# [seeds] or how many, metric: [mean, sample sd], ..., 'train_seconds': mean}}}}.
SWEEP_SUMMARY = 'sweep_summary.json'
SUMMARY_METRICS = ('accuracy', 'balanced_accuracy', 'roc_auc', 'best_valid_accuracy')


class SweepSummaryError(UserError, ValueError):
  """A --sweep_summary file that cannot be read as one."""


@dataclasses.dataclass
class SummaryCurve:
  """One series of a sweep summary: measured elsewhere, known here only by mean and sd."""
  series: str
  source: str  # Where its numbers come from, as the file says.
  sizes: dict  # {train images: {'seeds': [...] or n, metric: (mean, sd), 'train_seconds': s}}

  def seeds(self, size):
    seeds = self.sizes[size]['seeds']
    return len(seeds) if isinstance(seeds, list) else seeds


def sweep_summary(groups, source):
  """The SWEEP_SUMMARY record of sweep_groups(runs)."""
  series = {}
  for name, sizes in groups.items():
    series[name] = {}
    for size, runs in sizes.items():
      point = {'seeds': sorted(r.train_seed for r in runs)}
      for metric in SUMMARY_METRICS:
        values = [r.best_valid_accuracy if metric == 'best_valid_accuracy' else
                  r.results['metrics'].get(metric, np.nan) for r in runs]
        point[metric] = [float(v) for v in stats.mean_sd(values)]
      point['train_seconds'] = float(np.mean([r.results.get('train_seconds', np.nan)
                                              for r in runs]))
      series[name][str(size)] = point
  return {'source': source, 'series': series}


def _whole(value):
  return isinstance(value, int) and not isinstance(value, bool)


def load_sweep_summary(path):
  """[SummaryCurve] of a SWEEP_SUMMARY file (written by a report, or by hand from published
  numbers); SweepSummaryError naming the file and what is wrong."""
  try:
    record = json.loads(pathlib.Path(path).read_text())
    curves = []
    for series, sizes in record['series'].items():
      points = {}
      for size, point in sizes.items():
        seeds, seconds = point['seeds'], point.get('train_seconds')
        if not (_whole(seeds) or isinstance(seeds, list) and seeds and all(map(_whole, seeds))):
          raise TypeError(f'{series}/{size}: "seeds" is {seeds!r}, not a count or a list of them')
        if seconds is not None and not isinstance(seconds, (int, float)):
          raise TypeError(f'{series}/{size}: "train_seconds" is {seconds!r}, not a number')
        points[int(size)] = {'seeds': seeds, 'train_seconds': seconds}
        for metric in SUMMARY_METRICS:
          if metric in point:
            mean, sd = point[metric]
            points[int(size)][metric] = (float(mean), float(sd))
        if not {'accuracy', 'roc_auc'} <= set(points[int(size)]):
          raise KeyError(f'{series}/{size}: accuracy and roc_auc')
      curves.append(SummaryCurve(series=str(series), source=str(record['source']),
                                 sizes=dict(sorted(points.items()))))
  except OSError as e:
    raise SweepSummaryError(f'{path}: cannot read ({e.strerror or e}).') from e
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise SweepSummaryError(
        f'{path}: not a sweep summary ({type(e).__name__}: {e}); expected {{"source": ..., '
        f'"series": {{SERIES: {{SIZE: {{"seeds": ..., "accuracy": [mean, sd], "roc_auc": '
        f'[mean, sd], ...}}}}}}}}, as a report writes into {SWEEP_SUMMARY}.') from e
  return curves


# --- Paired tests, calibration, groups -------------------------------------------------------


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


def calibration(run):
  """Test ECE and NLL as trained and after temperature scaling fitted on the validation split
  (stats.calibration of the run's predictions)."""
  return stats.calibration(run.labels, run.p_male, run.valid_labels, run.valid_p_male)


def group_evaluations(run):
  """The run's evaluations with per-group metrics (evaluate --labels_csv), by file name."""
  found = {}
  for path in sorted(run.workdir.glob('eval_*.json')):
    result = json.loads(path.read_text())
    if result.get('groups'):
      found[path.stem] = result
  return found
