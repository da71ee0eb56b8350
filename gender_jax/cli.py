"""What every command line shares: one line for a user's mistake, quiet library logging, and
compiled programs kept for the next run.

Every command runs through `run`, which applies the process settings (gender_jax/process.py).
A mistake in what the user asked for (a gender_jax.UserError) or a fault of the environment (a
missing or read-only path, a full disk: gender_jax/full_disk.py) ends the command with
`error: ...` and exit status 1; a traceback means a bug. Library INFO logging (checkpointing,
datasets) is hidden unless asked for with --verbosity=0 (or higher).
"""
import errno
import os
import re
import shlex
import sys

from absl import app
from absl import flags
from absl import logging

from gender_jax import cache_dir
from gender_jax import full_disk
from gender_jax import process
from gender_jax import UserError

_ENVIRONMENT_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC,
                       errno.EDQUOT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG}


def environment_fault(error):
  """One line for an OSError of the environment or a full disk behind any error, or None for
  any other error."""
  if full_disk.caused_by_full_disk(error):
    return _disk_full(error)
  return _os_fault(error)


def _disk_full(error):
  """The line of a full disk that no write named: the path of `error` if it has one."""
  return str(full_disk.disk_full_error(getattr(error, 'filename', None), full_disk.ANY_FIX))


def _os_fault(error):
  """One line for an OSError of the environment (a missing or read-only path...), else None."""
  if not isinstance(error, OSError) or error.errno not in _ENVIRONMENT_ERRNOS:
    return None
  where = ' -> '.join(str(f) for f in (error.filename, error.filename2) if f)
  return f'{os.strerror(error.errno)}' + (f': {where}' if where else f' ({error})')


def command_line(module):
  """The command as the user typed it, with the module's name instead of its file's path."""
  return shlex.join(['python', '-m', module, *sys.argv[1:]])


def _flag_problems(error):
  """absl's flag errors in one line: 'flag --out=None: Flag --out must have a value other than
  None.' becomes '--out is required'."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return '; '.join(re.sub(r'^flag --(\S+)=None: Flag --\1 must have a value other than None\.$',
                          r'--\1 is required', line) for line in lines)


def _parse_flags(argv):
  """absl's flag parsing, with one line for each kind of mistake: a flag's (absl's own words,
  unless it is a missing required flag) or a --config.field the config does not have."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    raise SystemExit(f'error: {_flag_problems(e)} (--help lists the flags)') from None
  except (AttributeError, KeyError) as e:  # ml_collections' word for an unknown field.
    message = e
    while isinstance(message, (AttributeError, KeyError)) and message.args:
      message = message.args[0]  # KeyError('field\nDid you mean ...'), wrapped in others.
    lines = str(message).split('\n')
    field = lines[0].strip('\'"')
    given = next((a.split('=')[0] for a in argv if a.startswith('--config.') and
                  a.split('=')[0].endswith(field)), f'--config.{field}')
    hint = next((f' ({line.strip()})' for line in lines[1:] if line.strip()), '')
    raise SystemExit(f'error: {given}: the config has no field {field!r}{hint}.') from None


def compilation_cache_settings(environ):
  """{jax option: value} that turn on JAX's persistent compilation cache, for each option the
  environment does not set itself (JAX reads JAX_COMPILATION_CACHE_DIR and the like).

  A command run again loads what it compiled before instead of compiling it (predict on one
  photo: 3.9 s, then 2.4 s). Every program is kept, however quick its compilation (MTCNN's are
  many and small), in $XDG_CACHE_HOME/gender_jax/jax (default ~/.cache), at most 1 GiB (least
  recently used go first). JAX_ENABLE_COMPILATION_CACHE=false turns it off. Makes that folder;
  where it cannot, says so in one line and returns {}.
  """
  settings = {'jax_compilation_cache_dir': cache_dir('jax', environ=environ),
              'jax_persistent_cache_min_compile_time_secs': 0.0,
              'jax_compilation_cache_max_size': 1 << 30}
  settings = {name: value for name, value in settings.items() if name.upper() not in environ}
  folder = settings.get('jax_compilation_cache_dir')
  try:
    if folder:
      os.makedirs(folder, exist_ok=True)
  except OSError as e:  # A read-only home: the command runs, compiling as without the cache.
    logging.warning('Compiled programs are not kept: %s', environment_fault(e) or e)
    return {}
  return settings


def _unraisable(unraisable):
  """sys.unraisablehook without the noise of a failed checkpoint save: orbax's writes still
  pending call back into its event loop, closed by then, after the save's error is reported."""
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
    sys.__unraisablehook__(unraisable)


def _exit_at_once(line):
  """Says line and ends the process without Python's shutdown: a checkpoint save the full disk
  stopped leaves orbax's threads waiting for signals that never come, and the shutdown would
  wait for them for ever (seen in 1 of 4 runs)."""
  print(line, file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


def run(main):
  """app.run(main) with the process settings, one-line errors, quiet logging and the persistent
  compilation cache."""
  process.apply()  # Before anything starts JAX's backend.
  sys.unraisablehook = _unraisable

  def wrapped(argv):
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
    import jax  # pylint: disable=g-import-not-at-top
    for name, value in compilation_cache_settings(os.environ).items():
      jax.config.update(name, value)
    try:
      return main(argv)
    except full_disk.DiskFullError as e:
      _exit_at_once(f'error: {e}')
    except (UserError, app.UsageError) as e:
      raise SystemExit(f'error: {e}') from None
    except KeyboardInterrupt:
      print('stopped (Ctrl-C). Rerun the same command to go on: a training run resumes after its '
            'last finished epoch.', file=sys.stderr)
      raise SystemExit(130) from None
    except Exception as e:  # pylint: disable=broad-exception-caught  # Re-raised unless a fault.
      if full_disk.caused_by_full_disk(e):
        _exit_at_once(f'error: {_disk_full(e)}')
      fault = _os_fault(e)
      if fault is None:
        raise
      raise SystemExit(f'error: {fault}') from None
  app.run(wrapped, flags_parser=_parse_flags)
