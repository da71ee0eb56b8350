"""gender_jax's CPU defaults, set when it is imported: XLA flags and glibc keeping freed memory."""
import importlib.metadata
import os
import platform
import subprocess
import sys

import pytest

import gender_jax

FLAG = 'xla_cpu_experimental_ynn_fusion_type'


def run_python(code, **env):
  """stdout of `python -c code` in a fresh process (XLA and malloc read their settings once)."""
  environ = {k: v for k, v in os.environ.items()
             if k not in ('XLA_FLAGS', 'GENDER_JAX_CPU_DEFAULTS')}
  return subprocess.run([sys.executable, '-c', code], env={**environ, **env}, check=True,
                        capture_output=True, text=True).stdout.strip()


PRINT_FLAGS = 'import os, gender_jax; print(os.environ.get("XLA_FLAGS", ""))'


@pytest.mark.skipif(not importlib.metadata.version('jaxlib').startswith('0.10.'),
                    reason='the default flag is set on jaxlib 0.10 only')
def test_import_sets_the_xla_flag_and_keeps_the_users_flags():
  assert run_python(PRINT_FLAGS) == gender_jax.CPU_XLA_FLAGS
  assert run_python(PRINT_FLAGS, XLA_FLAGS='--xla_force_host_platform_device_count=4') == (
      f'--xla_force_host_platform_device_count=4 {gender_jax.CPU_XLA_FLAGS}')


def test_the_users_own_setting_wins_and_the_switch_turns_defaults_off():
  own = f'--{FLAG}=LIBRARY_FUSION_TYPE_INVALID'
  assert run_python(PRINT_FLAGS, XLA_FLAGS=own) == own
  assert run_python(PRINT_FLAGS, GENDER_JAX_CPU_DEFAULTS='0') == ''


# A jitted function whose 128 MiB intermediate (a transpose's input) is allocated and freed at
# every call; prints the page faults of 5 calls after 10 warm-up calls.
COUNT_FAULTS = '''
import resource
import gender_jax
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.sin(x) * 2).reshape(8, -1).T.sum(1))
x = jnp.ones((32 * 2**20,), jnp.float32)
for _ in range(10):
  f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  f(x).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='a glibc malloc setting')
def test_freed_memory_is_kept_rather_than_faulted_back_in_at_every_step():
  # Without: ~500,000 faults of 4 KiB pages (5 calls x 128 MiB, faulted in more than once).
  # With: 0 to ~33,000 here (XLA frees some buffers late, so the heap still grows at times).
  kept = int(run_python(COUNT_FAULTS, JAX_PLATFORMS='cpu'))
  returned = int(run_python(COUNT_FAULTS, JAX_PLATFORMS='cpu', GENDER_JAX_CPU_DEFAULTS='0'))
  assert kept * 5 < returned, (kept, returned)
