"""Checkpoints of a run: 'latest' after every epoch (to resume), 'best' by validation accuracy.

Under <workdir>/checkpoints/, each an orbax CheckpointManager keeping one step (the epoch) of two
items: 'latest' holds 'train_state' (the whole TrainState: params, optimizer state, step) and
'best' holds 'variables' (the model's variables alone); both hold 'progress' (epochs done, the
best epoch so far, seconds spent). Runs saved before these names called both 'state'; they still
resume and load.
"""
import os

import jax
import orbax.checkpoint as ocp

from gender_jax.training import run_dir
from gender_jax import UserError

LATEST, BEST = 'latest', 'best'
_STATE_ITEM = {LATEST: 'train_state', BEST: 'variables'}  # What each checkpoint's state is.
_PROGRESS_ITEM = 'progress'
_OLD_STATE_ITEM = 'state'  # Both checkpoints' state item before it was named by what it holds.


class CheckpointMismatchError(UserError, ValueError):
  """A workdir's checkpoint does not fit the state of the run asked to resume it."""


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
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    self._managers = {name: _manager(_directory(workdir, name), name, options)
                      for name in (LATEST, BEST)}

  def latest_epoch(self):
    """The epoch of the latest checkpoint, None before the first epoch ends."""
    return self._managers[LATEST].latest_step()

  def _save(self, name, epoch, state, progress):
    self._managers[name].save(epoch, args=ocp.args.Composite(**{
        _STATE_ITEM[name]: ocp.args.StandardSave(state),
        _PROGRESS_ITEM: ocp.args.JsonSave(progress)}))
    self._managers[name].wait_until_finished()

  def save_latest(self, epoch, train_state, progress):
    self._save(LATEST, epoch, train_state, progress)

  def save_best(self, epoch, variables, progress):
    self._save(BEST, epoch, variables, progress)

  def restore_latest(self, train_state, sharding):
    """(train_state, progress) of the latest epoch, shaped like `train_state`, on `sharding`;
    (train_state, None) before the first epoch ends."""
    manager = self._managers[LATEST]
    step = manager.latest_step()
    if step is None:
      return train_state, None
    item = _state_item(manager, LATEST, step)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**{
          item: ocp.args.StandardRestore(with_sharding(train_state, sharding)),
          _PROGRESS_ITEM: ocp.args.JsonRestore()}))
    except ValueError as e:  # Orbax's word for another tree structure or array shape.
      raise CheckpointMismatchError(
          f'The checkpoint {manager.directory}/{step} does not fit this run: its config differs '
          f'from the one the run was started with ({run_dir.CONFIG} beside checkpoints/), or an older '
          'gender_jax saved it. Rerun with that config, or train into a new --workdir. '
          f'Orbax said: {e}') from e
    return restored[item], restored[_PROGRESS_ITEM]

  def restore_best(self, variables, sharding):
    """The best epoch's variables, shaped like `variables`, on `sharding`."""
    return _restore_variables(self._managers[BEST], variables, sharding)


def _restore_variables(manager, variables, sharding):
  step = manager.latest_step()
  item = _state_item(manager, BEST, step)
  return manager.restore(step, args=ocp.args.Composite(**{
      item: ocp.args.StandardRestore(with_sharding(variables, sharding))}))[item]


def best_variables(workdir, abstract_variables):
  """(variables, epoch) of a finished or running run's best checkpoint, on this process's first
  device; NoRunError (saying what to do) when there is none."""
  directory = _directory(workdir, BEST)
  if not os.path.isdir(directory):
    raise run_dir.NoRunError(
        f'{workdir} holds no trained run (checkpoints/best is missing); train one with: '
        f'python -m gender_jax.main --config=configs/custom.py --workdir={workdir}')
  with _manager(directory, BEST) as manager:
    epoch = manager.latest_step()
    if epoch is None:
      raise run_dir.NoRunError(f'{directory} holds no checkpoint yet: the run has not finished '
                              'an epoch. Rerun its training command to resume it.')
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return _restore_variables(manager, abstract_variables, device), epoch
