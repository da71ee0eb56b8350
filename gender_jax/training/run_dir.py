"""The run directory: every file a run writes, what each holds, and how far the run got.

  <workdir>/
    config.json             the run's whole config (face_template filled in by the run)
    weights_metadata.json   the converted base weights' metadata; null for the custom model
    protocol/<split>.txt    the files of each split, path TAB label (no_face_<split>.txt too)
    metrics.jsonl           one line per trained epoch
    checkpoints/            latest and best (gender_jax/training/checkpoints.py)
    tensorboard/            the same epoch metrics for TensorBoard
    results.json            what the finished run trained and how it scored on test
    predictions_<split>.csv path,label,p_male of the best checkpoint on valid and test
    eval_<name>.json        gender_jax.evaluate's results
    run.lock                held by the process training here

The other modules read and write runs only through this one.
"""
import contextlib
import csv
import errno
import fcntl
import functools
import json
import os
import platform
import subprocess
import time

import jax
import numpy as np

from gender_jax import UserError
from gender_jax.models import weights_folder

CONFIG = 'config.json'
WEIGHTS_METADATA = 'weights_metadata.json'
PROTOCOL = 'protocol'
METRICS = 'metrics.jsonl'
CHECKPOINTS = 'checkpoints'
TENSORBOARD = 'tensorboard'
RESULTS = 'results.json'
LOCK = 'run.lock'
STUDY = 'study.json'  # A study's folder: its record, beside one run directory per point.
RESULTS_VERSION = 2  # 2: epochs_trained, seconds over every resume, command as typed.
# What results.json holds (besides 'version'); the writer refuses a record with other fields.
RESULTS_FIELDS = (
    'model', 'split', 'metrics', 'best_epoch', 'num_epochs', 'epochs_trained', 'train_seconds',
    'feature_seconds', 'total_seconds', 'train_images_per_second', 'params', 'weights',
    'data_dir', 'config', 'git_commit', 'devices', 'platform', 'command', 'finished')

# Config fields that say where things are or how big evaluation batches are, not what is
# computed: a rerun may change them. The weights' own identity is checked through their metadata.
NOT_RESULTS = ('tfds_dir', 'eval_batch_size', 'weights', 'face_detector_weights')
# Folders the run reads, recorded absolute so evaluate and predict find them from anywhere.
PATH_FIELDS = ('data_dir', 'tfds_dir', 'weights', 'face_detector_weights')


class ExperimentMismatchError(UserError, ValueError):
  """A rerun asked for another experiment than the run directory holds."""


class RunInUseError(UserError, RuntimeError):
  """Another process is training in the run directory."""


class NoRunError(UserError, FileNotFoundError):
  """A folder given as a run directory holds no (finished) run."""


def path(workdir, name):
  return os.path.join(workdir, name)


def predictions_file(split):
  return f'predictions_{split}.csv'


def evaluation_file(name):
  return f'eval_{name}.json'


def evaluation_name(split, folder=None, data_dir=None, own_data_dir=None):
  """What an evaluation is named for: the run's own split, or the other images it was given.

  Never a name of the run's own evaluations: a folder called 'test' is 'folder_test', the test
  split of another data folder is 'test_<folder>'.
  """
  if folder:
    name = os.path.basename(os.path.normpath(folder))
    return f'folder_{name}' if name in ('train', 'valid', 'test') else name
  if data_dir and os.path.abspath(data_dir) != os.path.abspath(own_data_dir or ''):
    return f'{split}_{os.path.basename(os.path.normpath(data_dir))}'
  return split


def protocol_file(workdir, name):
  return os.path.join(workdir, PROTOCOL, f'{name}.txt')


# --- Files -----------------------------------------------------------------------------------


def write_json(file_path, value):
  """Writes JSON atomically (a temporary file renamed), on process 0 only."""
  if jax.process_index() != 0:
    return
  tmp = f'{file_path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2, default=str)
  os.replace(tmp, file_path)


def results_record(*, config, metrics, best_epoch, epochs_trained, train_seconds, feature_seconds,
                   total_seconds, images_trained, params, weights_metadata, git_commit, devices,
                   command):
  """results.json's record (RESULTS_FIELDS, in order) of a finished run of `config`, scored on
  test by `metrics`; the platform and the time finished are this machine's, now."""
  return {
      'model': config.model, 'split': 'test', 'metrics': metrics, 'best_epoch': best_epoch,
      'num_epochs': config.num_epochs, 'epochs_trained': epochs_trained,
      'train_seconds': train_seconds, 'feature_seconds': feature_seconds,
      'total_seconds': total_seconds,
      'train_images_per_second': images_trained / max(train_seconds, 1e-9),
      'params': params,
      'weights': weights_metadata and {
          'source': weights_metadata['source'],
          'sha256': weights_folder.source_sha256(weights_metadata),
          'random_base': bool(weights_metadata.get('random_base'))},
      'data_dir': os.path.abspath(config.data_dir), 'config': config.to_dict(),
      'git_commit': git_commit, 'devices': devices,
      'platform': f'{platform.platform()}, {os.cpu_count()} CPUs, jax {jax.__version__}',
      'command': command,
      'finished': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
  }


def write_results(workdir, results):
  """Writes results.json: a finished run's record of RESULTS_FIELDS, versioned."""
  if sorted(results) != sorted(RESULTS_FIELDS):
    raise ValueError(f'A results record has the fields {sorted(RESULTS_FIELDS)}; got '
                     f'{sorted(results)}.')
  write_json(path(workdir, RESULTS), {'version': RESULTS_VERSION, **results})


class DamagedRecordError(UserError, ValueError):
  """A record of the run directory is not JSON any more (cut short, overwritten)."""


def read_json(file_path):
  """A record of the run; DamagedRecordError (one line naming the file) where it is not JSON."""
  with open(file_path) as f:
    text = f.read()
  try:
    return json.loads(text)
  except ValueError as e:
    raise DamagedRecordError(
        f'{file_path} is damaged ({e}); its run\'s other files are intact. Restore it from a '
        'copy, or train into a new --workdir.') from e


def read_metrics(workdir):
  """One dict per epoch, in epoch order; a resumed run that logged an epoch twice keeps the last."""
  file_path = path(workdir, METRICS)
  if not os.path.exists(file_path):
    return []
  by_epoch = {}
  with open(file_path) as f:
    for line in f:
      if line.strip():
        entry = json.loads(line)
        by_epoch[entry['epoch']] = entry
  return [by_epoch[e] for e in sorted(by_epoch)]


class MetricsWriter:
  """Epoch metrics to metrics.jsonl and TensorBoard (process 0 only)."""

  def __init__(self, workdir, resume_epoch):
    self.enabled = jax.process_index() == 0
    self.path = path(workdir, METRICS)
    if not self.enabled:
      return
    # A resumed run rewrites the epochs after its checkpoint, so lines are never duplicated.
    kept = [e for e in read_metrics(workdir) if e['epoch'] <= resume_epoch]
    with open(self.path, 'w') as f:
      f.writelines(json.dumps(e) + '\n' for e in kept)
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self.tensorboard = tensorboardX.SummaryWriter(path(workdir, TENSORBOARD))

  def write(self, epoch, values):
    if not self.enabled:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps({'epoch': epoch, **values}) + '\n')
    for name, value in values.items():
      self.tensorboard.add_scalar(name, value, epoch)
    self.tensorboard.flush()

  def close(self):
    if self.enabled:
      self.tensorboard.close()


def write_predictions(workdir, split, paths, labels, p_male):
  if jax.process_index() != 0:
    return
  with open(path(workdir, predictions_file(split)), 'w') as f:
    f.write('path,label,p_male\n')
    for rel, label, p in zip(paths, labels, p_male):
      f.write(f'{rel},{int(label)},{p:.6f}\n')


def read_predictions(workdir, split):
  """(paths, labels, p_male) of predictions_<split>.csv, or None if the run did not write it."""
  file_path = path(workdir, predictions_file(split))
  if not os.path.exists(file_path):
    return None
  with open(file_path, newline='') as f:
    rows = list(csv.DictReader(f))
  return ([r['path'] for r in rows], np.array([int(r['label']) for r in rows], np.int64),
          np.array([float(r['p_male']) for r in rows], np.float64))


# --- One experiment per run directory --------------------------------------------------------


def _as_json(value):
  return json.loads(json.dumps(value))  # Tuples as the record's lists.


def with_absolute_paths(config):
  """The config's PATH_FIELDS made absolute (from the current directory), in place; empty ones
  (no weights) stay empty."""
  for field in PATH_FIELDS:
    if config[field]:
      config[field] = os.path.abspath(os.path.expanduser(config[field]))
  return config


def config_changes(recorded, requested):
  """[(field, recorded value, requested value)] of changes that would change the results.

  num_epochs may grow (the run trains on) unless a cosine schedule decays over it (the rest of
  the run would follow another schedule); a face_template left empty is derived by the run;
  fields the record lacks (added to gender_jax since) cannot be compared.
  """
  requested = _as_json(requested)
  changes = []
  for field in sorted(set(recorded) & set(requested)):
    old, new = recorded[field], requested[field]
    if field in PATH_FIELDS and old and new:  # Runs saved before paths were absolute: relative.
      old, new = os.path.abspath(old), os.path.abspath(new)
    grows = (field == 'num_epochs' and new > old and recorded.get('lr_schedule') != 'cosine')
    if field in NOT_RESULTS or old == new or (field == 'face_template' and not new) or grows:
      continue
    changes.append((field, old, new))
  return changes


def check_experiment(workdir, config, weights_metadata):
  """Refuses to run `config` in a run directory that holds another experiment."""
  config_path = path(workdir, CONFIG)
  if not os.path.exists(config_path):
    return
  changes = config_changes(read_json(config_path), config.to_dict())
  recorded_weights = path(workdir, WEIGHTS_METADATA)
  if os.path.exists(recorded_weights):
    old = weights_folder.source_sha256(read_json(recorded_weights))
    new = weights_folder.source_sha256(weights_metadata)
    if old != new:
      changes.append(('weights (sha256 of their source file)', old, new))
  if changes:
    listed = '; '.join(f'{field}: {old!r} -> {new!r}' + (
        ', under lr_schedule \'cosine\', which decays over num_epochs'
        if field == 'num_epochs' else '') for field, old, new in changes)
    raise ExperimentMismatchError(
        f'{workdir} holds another experiment ({listed}). Rerun with the config it was started '
        f'with ({config_path}), or choose a new --workdir.')


def check_protocol_file(workdir, name, text):
  """Writes protocol/<name>.txt, or checks that the run's own list is the same."""
  file_path = protocol_file(workdir, name)
  if os.path.exists(file_path):
    with open(file_path) as f:
      if f.read() != text:  # Resuming on other examples would mix two experiments.
        raise ExperimentMismatchError(
            f'{file_path} lists other files than this config draws from the data folder (has '
            'the folder changed?); rerun on the data the run was started with, or choose a new '
            '--workdir.')
    return
  if name == 'train' and os.path.isdir(path(workdir, CHECKPOINTS)):
    raise ExperimentMismatchError(
        f'{file_path} is missing but {workdir} holds checkpoints: the images the run trained on '
        'are unknown. Restore that file, or choose a new --workdir.')
  os.makedirs(os.path.dirname(file_path), exist_ok=True)
  tmp = f'{file_path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, file_path)


@contextlib.contextmanager
def lock(workdir, command):
  """Holds workdir/run.lock while a run trains there; the kernel frees it if the process dies."""
  if jax.process_index() != 0:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  with open(path(workdir, LOCK), 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      f.seek(0)
      holder = f.read().strip() or 'another process'
      raise RunInUseError(f'{workdir} is in use by {holder}; wait for it to finish (or stop it), '
                          'or choose another --workdir.') from None
    f.seek(0)
    f.truncate()
    f.write(f'process {os.getpid()} since {time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}'
            f' ({command or "command not recorded"})\n')
    f.flush()
    try:
      yield
    finally:
      f.seek(0)
      f.truncate()


def training_now(workdir):
  """What holds workdir's lock ('process N since T (command)') while a run trains there, else
  None."""
  try:
    f = open(path(workdir, LOCK))
  except FileNotFoundError:
    return None
  with f:
    try:
      fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)  # Taken (and let go) only where none trains.
    except OSError:
      return f.read().strip() or 'another process'
    fcntl.flock(f, fcntl.LOCK_UN)
  return None


# --- How far a run got -----------------------------------------------------------------------


def finished_results(workdir, config):
  """results.json of a run of `config` that has trained all its epochs, else None."""
  results_path = path(workdir, RESULTS)
  if not os.path.exists(results_path):
    return None
  results = read_json(results_path)
  trained = results.get('epochs_trained', results.get('num_epochs'))
  return results if trained >= config.num_epochs else None


def status(workdir):
  """'finished', or 'epoch k of n' for a run that has not finished (k = 0: none trained)."""
  if os.path.exists(path(workdir, RESULTS)):
    return 'finished'
  num_epochs = read_json(path(workdir, CONFIG)).get('num_epochs')
  return f'epoch {len(read_metrics(workdir))} of {num_epochs}'


@functools.cache  # The first run's: a study's later runs run the code it loaded, not today's.
def git_commit():
  """The code's commit, '-dirty' if tracked files differ from it; None outside a checkout."""
  def git(*args, check=True):
    return subprocess.run(['git', *args], capture_output=True, text=True, check=check,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
  try:
    head = git('rev-parse', 'HEAD').stdout.strip()
    return head + ('-dirty' if git('diff', '--quiet', 'HEAD', check=False).returncode else '')
  except (OSError, subprocess.CalledProcessError):
    return None
