"""A full disk while writing: one line naming the file, the space and the setting that moves it.

The dataset build, its caches and the checkpoints write inside `writing`, which turns the disk
filling up into a DiskFullError, whether it comes as an OSError or inside another library's error
(TFDS's ArrayRecord writer and orbax's tensorstore say it in their messages). `replacing` writes
a file whole or not at all. What was written before is kept, or checked again on reading, so the
same command rerun after freeing space goes on where it stopped.
"""
import contextlib
import errno
import os
import shutil

from gender_jax import UserError

_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_MESSAGES = tuple(os.strerror(e) for e in _ERRNOS)  # Also C++ libraries' words for it.

# What to do, per kind of file: free space, or move what is written to another disk.
DATASET_FIX = ('Free some space there, or point config.tfds_dir (--config.tfds_dir) at another '
               'disk: the dataset and its caches are kept there. A rerun keeps what was finished.')
WORKDIR_FIX = ('Free some space there and rerun the same command: it resumes from the last saved '
               'epoch (or train into a --workdir on another disk, from the start).')
ANY_FIX = ('Free some space on it and rerun the same command; config.tfds_dir (--config.tfds_dir) '
           'moves the datasets and their caches to another disk, --workdir a run.')


class DiskFullError(UserError):
  """The disk filled up while writing a file; the message names it and says what to do."""


def caused_by_full_disk(error):
  """Whether the disk filling up is behind `error`, or any error it was raised from."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _ERRNOS:
      return True
    if any(message in str(error) for message in _MESSAGES):
      return True
    error = error.__cause__ or error.__context__
  return False


def _size(num_bytes):
  for unit in ('bytes', 'kB', 'MB', 'GB'):
    if num_bytes < 1000:
      break
    num_bytes /= 1000
  else:
    unit = 'TB'
  return f'{num_bytes:.0f} {unit}' if unit == 'bytes' else f'{num_bytes:.1f} {unit}'


def free_bytes(path):
  """Bytes free for writing at `path` (on the disk of its nearest existing folder); None where
  that cannot be told."""
  folder = os.path.abspath(path)
  while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
    folder = os.path.dirname(folder)
  try:
    return shutil.disk_usage(folder).free
  except OSError:
    return None


def disk_full_error(path, fix, needed=None):
  """The DiskFullError for writing `path` (None: unknown): the space free there and `needed`
  bytes where known, and `fix`."""
  free = free_bytes(path) if path else None
  space = ([f'{_size(free)} free there'] if free is not None else []) + (
      [f'about {_size(needed)} needed'] if needed else [])
  return DiskFullError('The disk is full' + (f': cannot write {path}' if path else '')
                       + (f' ({"; ".join(space)})' if space else '') + f'. {fix}')


@contextlib.contextmanager
def writing(path, fix, needed=None):
  """Turns the disk filling up inside the block into a DiskFullError naming `path` and the
  bytes the block writes (`needed`, where known)."""
  try:
    yield
  except DiskFullError:
    raise
  except Exception as e:  # pylint: disable=broad-exception-caught  # Re-raised unless disk full.
    if not caused_by_full_disk(e):
      raise
    raise disk_full_error(path, fix, needed) from e


@contextlib.contextmanager
def replacing(path):
  """A temporary name beside `path` to write; renamed onto `path` when the block ends, removed
  if it fails, so readers see the old file or the new one, never part of one."""
  tmp = f'{path}.{os.getpid()}.tmp{os.path.splitext(path)[1]}'  # np.save keeps a .npy name.
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
