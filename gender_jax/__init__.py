"""gender_jax: facial gender classification by transfer learning in JAX/Flax."""
import ctypes
import importlib.metadata
import os
import platform
import sys

LABELS = ('female', 'male')  # label index -> name: Female = 0, Male = 1.

# XLA:CPU hands convolutions and dots to YNNPACK by default. Its convolutions train these CNNs
# slower than Eigen's (benchmarks/RESULTS.md, "XLA:CPU flags"), and its dots run the Winograd
# layers' batched products slower than Eigen's on an Intel Xeon ("Dots off YNNPACK"), so YNNPACK
# keeps the reductions only. Set before JAX starts (XLA reads XLA_FLAGS once), and only on jaxlib
# releases known to have the flag: XLA aborts on an unknown one. A user's own setting of it wins;
# GENDER_JAX_CPU_DEFAULTS=0 sets none.
CPU_XLA_FLAGS = '--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE'
_JAXLIB_WITH_THE_FLAG = ('0.10.',)


def _set_cpu_defaults():
  flags = os.environ.get('XLA_FLAGS', '')
  if 'xla_cpu_experimental_ynn_fusion_type' in flags:
    return
  try:
    jaxlib = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return
  if jaxlib.startswith(_JAXLIB_WITH_THE_FLAG):
    os.environ['XLA_FLAGS'] = f'{flags} {CPU_XLA_FLAGS}'.strip()


# glibc hands blocks over 32 MiB back to the OS when freed, so each jitted step's buffers (the
# custom CNN's training step: ~250 MiB) come back as fresh pages, zeroed and faulted in one by one:
# 65,000 page faults a step, a fifth of its time (benchmarks/RESULTS.md, "Freed memory kept").
# Kept instead: no mmap'd blocks, no trimming, one arena (threads' own arenas would mmap again).
# The process's resident memory stays at its high-water mark.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # mallopt's parameters (malloc.h).


def _keep_freed_memory():
  if sys.platform != 'linux' or platform.libc_ver()[0] != 'glibc':
    return
  libc = ctypes.CDLL(None)  # The process's malloc: glibc's, or a preloaded one (ignores this).
  for parameter, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)):
    libc.mallopt(parameter, value)


if os.environ.get('GENDER_JAX_CPU_DEFAULTS', '1') != '0':
  _set_cpu_defaults()
  _keep_freed_memory()


def cache_dir(*parts, environ=None):
  """A folder under $XDG_CACHE_HOME/gender_jax (default ~/.cache/gender_jax): what gender_jax keeps
  between runs of any command (compiled programs, convolution timings). Not made here."""
  environ = os.environ if environ is None else environ
  home = environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(home, 'gender_jax', *parts)


class UserError(Exception):
  """A mistake in what the user asked for: command lines print its message as one line."""
