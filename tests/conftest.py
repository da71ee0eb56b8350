"""Test setup: 4 fake CPU devices (data parallelism is tested without accelerators)."""
import os
import pathlib

# Before jax is imported anywhere: fake devices, CPU only, Keras (test-only) on the JAX backend.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('KERAS_BACKEND', 'jax')
os.environ.setdefault('TQDM_DISABLE', '1')

import pytest  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
CELEBA_GENDER = REPO.parent / 'shared' / 'data' / 'celeba_gender'


@pytest.fixture
def celeba_gender_dir():
  """The real faces beside the checkout; tests that need them skip where they are missing."""
  if not (CELEBA_GENDER / 'train').is_dir():
    pytest.skip(f'real faces not found at {CELEBA_GENDER} (see README: Data)')
  return CELEBA_GENDER
