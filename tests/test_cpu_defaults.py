"""gender_jax's CPU defaults (XLA flags, glibc keeping freed memory): applied by every command, and
never by importing the package."""
import importlib.metadata
import os
import platform
import subprocess
import sys

import pytest

from gender_jax import process

FLAG = 'xla_cpu_experimental_ynn_fusion_type'
COMMANDS = ('gender_jax.main', 'gender_jax.evaluate', 'gender_jax.predict', 'gender_jax.study',
            'gender_jax.report', 'gender_jax.data', 'weights_convert')
ON_JAXLIB_0_10 = pytest.mark.skipif(
    not importlib.metadata.version('jaxlib').startswith('0.10.'),
    reason='the default flag is set on jaxlib 0.10 only')


def run_python(code, **env):
  """stdout of `python -c code` in a fresh process (XLA and malloc read their settings once)."""
  environ = {k: v for k, v in os.environ.items()
             if k not in ('XLA_FLAGS', 'GENDER_JAX_CPU_DEFAULTS')}
  return subprocess.run([sys.executable, '-c', code], env={**environ, **env}, check=True,
                        capture_output=True, text=True).stdout.strip()


# Runs a command's `python -m` entry with absl's app.run replaced by a print of what the command's
# main would start with: XLA_FLAGS, and whether JAX's backend had already started.
AS_COMMAND = '''
import os, runpy, sys
from unittest import mock
from absl import app
from jax._src import xla_bridge
def started(main, flags_parser=None):
  print(os.environ.get('XLA_FLAGS', ''), xla_bridge.backends_are_initialized())
sys.argv = [{module!r}]
with mock.patch.object(app, 'run', started):
  runpy.run_module({module!r}, run_name='__main__', alter_sys=True)
'''


def test_importing_the_package_and_its_commands_changes_nothing():
  imports = '; '.join(f'import {m}' for m in COMMANDS + ('gender_jax.report.__main__',
                                                           'gender_jax.data.__main__'))
  assert run_python(f'import os; {imports}; print(os.environ.get("XLA_FLAGS"))') == 'None'


@ON_JAXLIB_0_10
@pytest.mark.parametrize('module', COMMANDS)
def test_every_command_applies_the_flag_before_jax_starts(module):
  assert run_python(AS_COMMAND.format(module=module)) == f'{process.CPU_XLA_FLAGS} False'


@ON_JAXLIB_0_10
def test_apply_keeps_the_users_flags():
  environ = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  process.apply(environ)
  assert environ['XLA_FLAGS'] == (
      f'--xla_force_host_platform_device_count=4 {process.CPU_XLA_FLAGS}')


def test_the_users_own_setting_wins_and_the_switch_turns_defaults_off():
  own = {'XLA_FLAGS': f'--{FLAG}=LIBRARY_FUSION_TYPE_INVALID'}
  process.apply(own)
  assert own == {'XLA_FLAGS': f'--{FLAG}=LIBRARY_FUSION_TYPE_INVALID'}
  off = {'GENDER_JAX_CPU_DEFAULTS': '0'}
  process.apply(off)
  assert off == {'GENDER_JAX_CPU_DEFAULTS': '0'}


# A jitted function whose 128 MiB intermediate (a transpose's input) is allocated and freed at
# every call; prints the page faults of 5 calls after 10 warm-up calls.
COUNT_FAULTS = '''
import resource
from gender_jax import process
process.apply()
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
