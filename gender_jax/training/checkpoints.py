"""Checkpoints of a run: 'latest' after every epoch (to resume), 'best' by validation accuracy.

Under <workdir>/checkpoints/, each an orbax CheckpointManager keeping one step (the epoch) of two
items: 'latest' holds 'train_state' (the whole TrainState: params, optimizer state, step) and
'best' holds 'variables' (the model's variables alone); both hold 'progress' (epochs done, the
best epoch so far, seconds spent). Each saved step is sealed with the sha256 of its files, checked
before a restore, so a checkpoint whose files were damaged is refused rather than restored with
changed values (orbax reads some damage without a word). Two 'latest' epochs are kept: resuming
falls back to the earlier one if the last is damaged. A save that fills the disk ends in one line
(gender_jax/full_disk.py) and leaves the epochs saved before it as they were; the next run clears
its partial files. Runs saved before these names called both 'state'; they still resume and load.
"""
import contextlib
import hashlib
import json
import logging
import os

import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
import tqdm

from gender_jax import full_disk
from gender_jax import UserError
from gender_jax import pytree_digest
from gender_jax.training import run_dir

LATEST, BEST = 'latest', 'best'
_STATE_ITEM = {LATEST: 'train_state', BEST: 'variables'}  # What each checkpoint's state is.
_PROGRESS_ITEM = 'progress'
_OLD_STATE_ITEM = 'state'  # Both checkpoints' state item before it was named by what it holds.
SEAL = 'files.sha256.json'  # In each step's folder: {relative path: sha256} of its files.
_KEEP = {LATEST: 2, BEST: 1}


class CheckpointMismatchError(UserError, ValueError):
  """A workdir's checkpoint does not fit the state of the run asked to resume it."""


class DamagedCheckpointError(UserError, RuntimeError):
  """A checkpoint's files no longer give back what was saved (or give non-finite values)."""


def _directory(workdir, name):
  return os.path.abspath(os.path.join(workdir, run_dir.CHECKPOINTS, name))


def _manager(directory, name, options=None):
  return ocp.CheckpointManager(directory, options=options, item_names=(
      _STATE_ITEM[name], _OLD_STATE_ITEM, _PROGRESS_ITEM))


def _state_item(manager, name, step):
  """The name `step` saved its state under: today's, or 'state' for runs saved before it."""
  old = os.path.isdir(os.path.join(manager.directory, str(step), _OLD_STATE_ITEM))
  return _OLD_STATE_ITEM if old else _STATE_ITEM[name]


def with_sharding(tree, sharding):
  """Shape/dtype structs placed on `sharding`: checkpoints restore onto this run's devices,
  whatever devices saved them (a GPU run evaluates on a laptop)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
                      if hasattr(x, 'shape') else x, tree)  # Python scalars restore as they are.


class Checkpoints:
  """The two checkpoints of the run in `workdir`, created if missing."""

  def __init__(self, workdir):
    # cleanup_tmp_directories: the partial files of a save that failed (a full disk) go.
    self._managers = {name: _manager(_directory(workdir, name), name,
                                     ocp.CheckpointManagerOptions(
                                         max_to_keep=_KEEP[name], create=True,
                                         cleanup_tmp_directories=True))
                      for name in (LATEST, BEST)}

  def latest_epoch(self):
    """The epoch of the latest checkpoint, None before the first epoch ends."""
    return self._managers[LATEST].latest_step()

  def _save(self, name, epoch, state, progress):
    manager = self._managers[name]
    where = os.path.join(manager.directory, str(epoch))
    with full_disk.writing(where, full_disk.WORKDIR_FIX, _num_bytes(state)), \
        _reports_muted_if_disk_full():
      manager.save(epoch, args=ocp.args.Composite(**{
          _STATE_ITEM[name]: ocp.args.StandardSave(state),
          _PROGRESS_ITEM: ocp.args.JsonSave(progress)}))
      manager.wait_until_finished()
      if jax.process_count() > 1:  # Every process's files are in before the seal.
        multihost_utils.sync_global_devices(f'checkpoint {name} {epoch}')
      if jax.process_index() == 0:
        _seal(where)

  def save_latest(self, epoch, train_state, progress):
    self._save(LATEST, epoch, train_state, progress)

  def save_best(self, epoch, variables, progress):
    self._save(BEST, epoch, variables, progress)

  def restore_latest(self, train_state, sharding):
    """(train_state, progress) of the latest good epoch, shaped like `train_state`, on
    `sharding`; (train_state, None) before the first epoch ends. A damaged last epoch is said in
    one line and the one before it is resumed."""
    manager = self._managers[LATEST]
    steps = sorted(manager.all_steps(), reverse=True)
    damage = []
    for step in steps:
      try:
        state, progress = _restore(manager, LATEST, step, train_state, sharding)
      except DamagedCheckpointError as e:
        damage.append(str(e))
        continue
      if damage and jax.process_index() == 0:
        tqdm.tqdm.write(f'{damage[0]} Resuming from epoch {step}, the checkpoint before it.')
      return state, progress
    if damage:
      raise DamagedCheckpointError(
          f'{damage[-1]} No earlier checkpoint of {manager.directory} restores either; delete '
          f'{os.path.dirname(manager.directory)} to train this run again from the start.')
    return train_state, None

  def restore_best(self, variables, sharding):
    """The best epoch's variables, shaped like `variables`, on `sharding`."""
    manager = self._managers[BEST]
    return _restore(manager, BEST, manager.latest_step(), variables, sharding)[0]


def _num_bytes(state):
  return sum(getattr(leaf, 'nbytes', 0) for leaf in jax.tree.leaves(state))


_ORBAX_FILES = os.path.dirname(ocp.__file__) + os.sep
_REPORTING = ('absl', 'asyncio')  # The loggers of orbax and of its event loops.


class _SaveReports(logging.Filter):
  """Holds the log records of orbax and its event loops, or drops them once muted."""

  def __init__(self):
    super().__init__()
    self.held = []  # None once muted.

  def filter(self, record):
    if record.name == 'absl' and not record.pathname.startswith(_ORBAX_FILES):
      return True
    if self.held is not None:
      self.held.append(record)
    return False


@contextlib.contextmanager
def _reports_muted_if_disk_full():
  """Holds what orbax logs during a save and shows it after, unless the disk filled up: then its
  threads and event loops report each failed write with a traceback, some after the save has
  raised, and the save's error says it in one line, so they stay muted for good."""
  reports, muted = _SaveReports(), False
  for name in _REPORTING:
    logging.getLogger(name).addFilter(reports)
  try:
    yield
  except Exception as e:
    muted = full_disk.caused_by_full_disk(e)
    raise
  finally:
    if muted:
      reports.held = None
    else:
      for name in _REPORTING:
        logging.getLogger(name).removeFilter(reports)
      for record in reports.held:
        logging.getLogger(record.name).handle(record)


def _restore(manager, name, step, like, sharding):
  """(state, progress) of checkpoint `step`, its files checked against its seal first."""
  item = _state_item(manager, name, step)
  where = f'{manager.directory}/{step}'
  if changed := _unsealed(where):
    raise _damaged(where, changed)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**{
        item: ocp.args.StandardRestore(with_sharding(like, sharding)),
        _PROGRESS_ITEM: ocp.args.JsonRestore()}))
  except (json.JSONDecodeError, OSError) as e:
    raise _damaged(where, e) from e
  except ValueError as e:  # Orbax's word for another tree or shape, and tensorstore's for damage.
    if 'DATA_LOSS' in str(e) or 'corrupt' in str(e).lower():
      raise _damaged(where, e) from e
    raise CheckpointMismatchError(
        f'The checkpoint {where} does not fit this run: its config differs from the one the run '
        f'was started with ({run_dir.CONFIG} beside checkpoints/), or an older gender_jax saved '
        f'it. Rerun with that config, or train into a new --workdir. Orbax said: {e}') from e
  state, progress = restored[item], restored[_PROGRESS_ITEM]
  leaves = [pytree_digest.host_array(leaf) for leaf in jax.tree.leaves(state)]
  if not all(np.isfinite(leaf).all() for leaf in leaves if np.issubdtype(leaf.dtype, np.inexact)):
    raise _damaged(where, 'it holds values that are not finite')
  return state, progress


def _file_digests(folder):
  digests = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      if not os.path.relpath(path, folder).startswith(SEAL):  # The seal, or its temporary file.
        with open(path, 'rb') as f:
          digests[os.path.relpath(path, folder)] = hashlib.file_digest(f, 'sha256').hexdigest()
  return digests


def _seal(folder):
  """Writes the sha256 of every file of a saved step beside them, atomically."""
  digests = _file_digests(folder)
  with full_disk.replacing(os.path.join(folder, SEAL)) as tmp, open(tmp, 'w') as f:
    json.dump(digests, f, sort_keys=True)


def _unsealed(folder):
  """What differs from the step's seal ('' where all agrees, or no seal: saved before seals)."""
  try:
    with open(os.path.join(folder, SEAL)) as f:
      sealed = json.load(f)
  except FileNotFoundError:
    return ''
  except (OSError, ValueError) as e:
    return f'its {SEAL} is unreadable: {e}'
  found = _file_digests(folder)
  changed = sorted(p for p in sealed.keys() | found.keys() if sealed.get(p) != found.get(p))
  if not changed:
    return ''
  return f'{", ".join(changed[:3])}{" ..." if len(changed) > 3 else ""} changed since it was saved'


def _damaged(where, why):
  why = (str(why).splitlines() or [type(why).__name__])[0][:160]
  return DamagedCheckpointError(f'The checkpoint {where} is damaged ({why}).')


def best_variables(workdir, abstract_variables):
  """(variables, epoch) of a finished or running run's best checkpoint, on this process's first
  device; NoRunError (saying what to do) when there is none, DamagedCheckpointError when its
  files no longer give back what was saved."""
  directory = _directory(workdir, BEST)
  if not os.path.isdir(directory):
    raise run_dir.NoRunError(
        f'{workdir} holds no trained run (checkpoints/best is missing); train one with: '
        f'python -m gender_jax.main --config=configs/custom.py --workdir={workdir}')
  with _manager(directory, BEST) as manager:
    epoch = manager.latest_step()
    if epoch is None:
      if holder := run_dir.training_now(workdir):
        raise run_dir.NoRunError(f'{workdir} is still training ({holder}) and has not finished '
                                 'an epoch yet; try again once it has.')
      raise run_dir.NoRunError(f'{directory} holds no checkpoint yet: the run has not finished '
                               'an epoch. Rerun its training command to resume it.')
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    try:
      return _restore(manager, BEST, epoch, abstract_variables, device)[0], epoch
    except DamagedCheckpointError as e:
      raise DamagedCheckpointError(
          f'{e} Its run can make it again: delete {os.path.join(workdir, run_dir.CHECKPOINTS)} '
          f'and {run_dir.path(workdir, run_dir.RESULTS)}, then rerun the training command '
          f'(its {run_dir.CONFIG} holds the config).') from e
