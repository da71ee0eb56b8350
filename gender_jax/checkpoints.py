"""Checkpoints of a run: 'latest' after every epoch (to resume), 'best' by validation accuracy.

Under <workdir>/checkpoints/, each an orbax CheckpointManager keeping one step (the epoch) of two
items: 'state' (the whole TrainState in latest, the model's variables in best) and 'progress'
(epochs done, the best epoch so far, seconds spent).
"""
import os

import jax
import orbax.checkpoint as ocp

from gender_jax import UserError
from gender_jax import run_dir

LATEST, BEST = 'latest', 'best'
_ITEMS = ('state', 'progress')


class CheckpointMismatchError(UserError, ValueError):
  """A workdir's checkpoint does not fit the state of the run asked to resume it."""


def _directory(workdir, name):
  return os.path.abspath(os.path.join(workdir, run_dir.CHECKPOINTS, name))


def managers(workdir):
  """{LATEST: manager, BEST: manager} of the run in workdir, created if missing."""
  options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
  return {name: ocp.CheckpointManager(_directory(workdir, name), options=options,
                                      item_names=_ITEMS) for name in (LATEST, BEST)}


def save(manager, epoch, state, progress):
  manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                              progress=ocp.args.JsonSave(progress)))
  manager.wait_until_finished()


def with_sharding(tree, sharding):
  """Shape/dtype structs placed on `sharding`: checkpoints restore onto this run's devices,
  whatever devices saved them (a GPU run evaluates on a laptop)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
                      if hasattr(x, 'shape') else x, tree)  # Python scalars restore as they are.


def restore_latest(manager, state, sharding):
  """(state, progress) from the manager's latest step, or (state, None) if there is none."""
  step = manager.latest_step()
  if step is None:
    return state, None
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(with_sharding(state, sharding)),
        progress=ocp.args.JsonRestore()))
  except ValueError as e:  # Orbax's word for another tree structure or array shape.
    raise CheckpointMismatchError(
        f'The checkpoint {manager.directory}/{step} does not fit this run: its config differs '
        'from the one the run was started with (config.json beside checkpoints/), or an older '
        'gender_jax saved it. Rerun with that config, or train into a new --workdir. '
        f'Orbax said: {e}') from e
  return restored.state, restored.progress


def restore_best(manager, variables, sharding):
  """The best checkpoint's variables, shaped like `variables`, on `sharding`."""
  restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
      state=ocp.args.StandardRestore(with_sharding(variables, sharding))))
  return restored.state


def best_variables(workdir, abstract_variables):
  """(variables, epoch) of a finished or running run's best checkpoint, on this process's first
  device; FileNotFoundError (saying what to do) when there is none."""
  directory = _directory(workdir, BEST)
  if not os.path.isdir(directory):
    raise run_dir.NoRunError(
        f'{workdir} holds no trained run (checkpoints/best is missing); train one with: '
        f'python -m gender_jax.main --config=configs/custom.py --workdir={workdir}')
  with ocp.CheckpointManager(directory, item_names=_ITEMS) as manager:
    epoch = manager.latest_step()
    if epoch is None:
      raise run_dir.NoRunError(f'{directory} holds no checkpoint yet: the run has not finished '
                              'an epoch. Rerun its training command to resume it.')
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return restore_best(manager, abstract_variables, device), epoch
