"""Test setup: 4 fake CPU devices (data parallelism is tested without accelerators)."""
import importlib.util
import os
import pathlib
import sys
import tempfile
from unittest import mock

# Before jax is imported anywhere: fake devices, CPU only, Keras (test-only) on the JAX backend.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('KERAS_BACKEND', 'jax')
os.environ.setdefault('TQDM_DISABLE', '1')

import pytest  # pylint: disable=g-import-not-at-top

from gender_jax import process  # pylint: disable=g-import-not-at-top

process.apply()  # As every command does: the tests run with the commands' CPU defaults.

REPO = pathlib.Path(__file__).resolve().parents[1]
CELEBA_GENDER = REPO.parent / 'shared' / 'data' / 'celeba_gender'


@pytest.fixture(scope='session', autouse=True)
def _scratch_inside_pytests_folder(tmp_path_factory):
  """tempfile's folder (and TMPDIR, for subprocesses) and the commands' compilation cache inside
  pytest's own folder, which pytest prunes: TFDS leaves an empty temporary folder behind for
  every dataset it builds, and the user's own caches (compiled programs, convolution timings)
  stay untouched."""
  scratch = str(tmp_path_factory.mktemp('tempfile'))
  compiled = str(tmp_path_factory.mktemp('compilation_cache'))
  cache_home = str(tmp_path_factory.mktemp('cache_home'))
  with mock.patch.object(tempfile, 'tempdir', scratch), mock.patch.dict(
      os.environ, {'TMPDIR': scratch, 'JAX_COMPILATION_CACHE_DIR': compiled,
                   'XDG_CACHE_HOME': cache_home}):
    yield


@pytest.fixture(scope='session')
def celeba_gender_dir():
  """The real faces beside the checkout; tests that need them skip where they are missing."""
  if not (CELEBA_GENDER / 'train').is_dir():
    pytest.skip(f'real faces not found at {CELEBA_GENDER} (see README: Data)')
  return CELEBA_GENDER


def write_synthetic_faces(root, counts=None, size=(24, 28), seed=0):
  """A {train,valid,test}/{male,female} folder of small JPEGs a tiny model can separate.

  Male images are brighter in the top half, female ones in the bottom half, under noise.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  counts = counts or {'train': 24, 'valid': 10, 'test': 10}
  rng = np.random.default_rng(seed)
  w, h = size
  for split, per_class in counts.items():
    for label, cls in enumerate(('female', 'male')):
      folder = pathlib.Path(root) / split / cls
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(per_class):
        image = rng.integers(0, 120, (h, w, 3)).astype(np.float32)
        half = slice(0, h // 2) if label else slice(h // 2, h)
        image[half] += 100
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(
            folder / f'{split}_{cls}_{i:03d}.jpg', quality=95)
  return pathlib.Path(root)


@pytest.fixture(scope='session')
def synthetic_faces(tmp_path_factory):
  """A small labelled face folder (read-only use), made once per test session."""
  return write_synthetic_faces(tmp_path_factory.mktemp('faces'))


@pytest.fixture(scope='session')
def run_dir(tmp_path_factory, synthetic_faces):
  """A tiny custom model trained through the real training path (shared: only read, or
  evaluated into its own eval_*.json files)."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from gender_jax.training import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('run')
  config = tiny.get_config('custom')
  config.data_dir = str(synthetic_faces)
  config.tfds_dir = str(tmp_path_factory.mktemp('tfds'))
  train.train_and_evaluate(config, str(workdir))
  return workdir


@pytest.fixture(scope='session')
def converted_weights(tmp_path_factory):
  """{source: folder} converted by weights_convert from a Keras-written, seeded random VGG16."""
  import keras  # pylint: disable=g-import-not-at-top
  from weights_convert import convert  # pylint: disable=g-import-not-at-top
  tmp = tmp_path_factory.mktemp('keras_vgg16')
  keras.utils.set_random_seed(0)
  net = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
  h5 = tmp / 'vgg16.weights.h5'
  net.save_weights(str(h5))
  folders = {}
  for source in ('imagenet', 'vggface'):
    convert.convert(source, h5, tmp / source)
    folders[source] = tmp / source
  return folders


@pytest.fixture(scope='session')
def mtcnn_weights(tmp_path_factory):
  """MTCNN weights converted by weights_convert from the installed facenet-pytorch's own files
  (facenet_pytorch/data/*.pt), so the detector and its reference share them."""
  spec = importlib.util.find_spec('facenet_pytorch')  # Found without importing torch.
  if spec is None:
    pytest.skip('facenet-pytorch is not installed (.ci/run installs it: '
                'pip install --no-deps facenet-pytorch==2.6.0)')
  from weights_convert import mtcnn  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp('mtcnn') / 'weights'
  mtcnn.convert_mtcnn(out, pt_dir=pathlib.Path(spec.origin).parent / 'data')
  return out


@pytest.fixture(scope='session')
def _converter_flags():
  from weights_convert import __main__ as command  # pylint: disable=g-import-not-at-top
  command.define_flags()  # As `python -m weights_convert` does; once per process (absl's rule).
  return command


@pytest.fixture
def convert_cli(_converter_flags, capsys):  # pylint: disable=redefined-outer-name
  """Runs `python -m weights_convert ARGS` in-process: (exit status, stdout, stderr). In-process,
  so that tests can monkeypatch downloads; flagsaver resets the flags after each run."""
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  from gender_jax import cli  # pylint: disable=g-import-not-at-top

  def run(*args):
    argv = ['weights_convert', *map(str, args)]
    with flagsaver.flagsaver(), mock.patch.object(sys, 'argv', argv), \
        pytest.raises(SystemExit) as exit_:
      cli.run(_converter_flags.main)
    captured = capsys.readouterr()
    code = exit_.value.code
    if isinstance(code, str):  # SystemExit('error: ...'): the interpreter prints it, status 1.
      return 1, captured.out, captured.err + code + '\n'
    return code or 0, captured.out, captured.err
  return run
