"""Process settings every command applies before JAX starts its backend: XLA:CPU flags and glibc's
malloc keeping freed memory. Importing gender_jax applies nothing; `apply()` does, once.

GENDER_JAX_CPU_DEFAULTS=0 applies none of them.
"""
import ctypes
import importlib.metadata
import os
import platform
import sys

# XLA:CPU hands convolutions and dots to YNNPACK by default. Its convolutions train these CNNs
# slower than Eigen's (benchmarks/RESULTS.md#xla-cpu-flags), and its dots run the Winograd layers'
# batched products slower than Eigen's on an Intel Xeon (benchmarks/RESULTS.md#dots-off-ynnpack),
# so YNNPACK keeps the reductions only. XLA reads XLA_FLAGS once, when the backend starts, and
# aborts on a flag it does not know: set only on jaxlib releases known to have it. A user's own
# setting of it wins.
CPU_XLA_FLAGS = '--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE'
_JAXLIB_WITH_THE_FLAG = ('0.10.',)

# glibc hands blocks over 32 MiB back to the OS when freed, so each jitted step's buffers come back
# as fresh pages, zeroed and faulted in one by one (benchmarks/RESULTS.md#freed-memory-kept).
# Kept instead: no mmap'd blocks, no trimming, one arena (threads' own arenas would mmap again).
# The process's resident memory stays at its high-water mark.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # mallopt's parameters (malloc.h).


def cpu_xla_flags(environ):
  """XLA_FLAGS with gender_jax's CPU default added, or as they are where it does not apply."""
  flags = environ.get('XLA_FLAGS', '')
  if 'xla_cpu_experimental_ynn_fusion_type' in flags:
    return flags
  try:
    jaxlib = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return flags
  return f'{flags} {CPU_XLA_FLAGS}'.strip() if jaxlib.startswith(_JAXLIB_WITH_THE_FLAG) else flags


def keep_freed_memory():
  """Tells glibc's malloc to keep freed memory for the next allocation (no-op elsewhere)."""
  if sys.platform != 'linux' or platform.libc_ver()[0] != 'glibc':
    return
  libc = ctypes.CDLL(None)  # The process's malloc: glibc's, or a preloaded one (ignores this).
  for parameter, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)):
    libc.mallopt(parameter, value)


def apply(environ=None):
  """Applies the CPU defaults to this process unless GENDER_JAX_CPU_DEFAULTS=0. Call it before
  JAX starts its backend (the first computation or device query)."""
  environ = os.environ if environ is None else environ
  if environ.get('GENDER_JAX_CPU_DEFAULTS', '1') == '0':
    return
  flags = cpu_xla_flags(environ)
  if flags:
    environ['XLA_FLAGS'] = flags
  keep_freed_memory()
