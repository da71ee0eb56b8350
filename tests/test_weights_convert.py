"""weights_convert: Keras VGG16 h5 files in every layout become Flax params that reproduce Keras.

Keras (JAX backend, tests only) builds a seeded VGG16 and a VGGFace-named twin and saves them in
each layout Keras 3 writes; the Keras 2 / tf-keras layouts (the public files' own) are written
with h5py exactly as keras/src/legacy/saving/legacy_h5_format.py lays them out.
"""
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from unittest import mock

from absl.testing import flagsaver
import h5py
import jax
import keras
from keras.src.legacy.saving import legacy_h5_format
import numpy as np
import pytest

from gender_jax import cli
from gender_jax.models import networks
from gender_jax.models import preprocessing
from gender_jax.models import pretrained
from gender_jax.models import weights_folder
from weights_convert import __main__ as command
from weights_convert import convert, download, mtcnn

SIZE = 64  # Input px: a 2x2x512 output, so the comparison covers spatial layout too.
REPO = pathlib.Path(__file__).resolve().parents[1]
IMAGENET_TOP = ['fc1', 'fc2', 'predictions']
VGGFACE_TOP = ['fc6', 'fc7', 'fc8']


def _vggface_twin(inputs):
  """keras-vggface's VGG16 naming: conv{b}_{i}, pool{b}."""
  x = inputs
  for b, convs in enumerate(networks.VGG16_BLOCKS, 1):
    for i, features in enumerate(convs, 1):
      x = keras.layers.Conv2D(features, 3, padding='same', activation='relu',
                              name=f'conv{b}_{i}')(x)
    x = keras.layers.MaxPooling2D(2, 2, name=f'pool{b}')(x)
  return x


def _with_top(base, names):
  """A whole model: `base` (shared layers) under a small fully connected top named `names`."""
  x = keras.layers.Flatten(name='flatten')(base.output)
  x = keras.layers.Dense(8, activation='relu', name=names[0])(x)
  x = keras.layers.Dense(8, activation='relu', name=names[1])(x)
  return keras.Model(base.input, keras.layers.Dense(2, name=names[2])(x))


def _randomize_biases(model, rng):
  """Keras starts biases at zero, which would hide a bias that is lost or swapped."""
  for layer in model.layers:
    if layer.get_weights():
      kernel, bias = layer.get_weights()
      layer.set_weights([kernel, rng.normal(0.0, 0.1, bias.shape).astype(np.float32)])


def _write_keras2_h5(path, model, style, whole_model=False):
  """Writes `model` in the legacy h5 layout with Keras 2 (`style='keras2'`, block1_conv1_W_1:0)
  or tf-keras (`style='tf_keras'`, block1_conv1/kernel:0) weight names."""
  with h5py.File(path, 'w') as f:
    group = f
    if whole_model:
      f.attrs['model_config'] = json.dumps({'class_name': 'Model'}).encode('utf8')
      group = f.create_group('model_weights')
    # Fixed-length byte strings, as h5py 2 stored Keras 2's lists of names.
    group.attrs['layer_names'] = np.array([layer.name.encode('utf8') for layer in model.layers])
    group.attrs['backend'] = b'tensorflow'
    group.attrs['keras_version'] = b'2.2.4'
    for layer in sorted(model.layers, key=lambda layer: layer.name):
      layer_group = group.create_group(layer.name)
      names = []
      for kind, value in zip(('kernel', 'bias'), layer.get_weights()):
        if style == 'keras2':
          names.append(f'{layer.name}_{"W" if kind == "kernel" else "b"}_1:0')
        else:
          names.append(f'{layer.name}/{kind}:0')
        layer_group.create_dataset(names[-1], data=value)
      layer_group.attrs['weight_names'] = np.array([name.encode('utf8') for name in names])


def _save_legacy_weights(path, model):
  with h5py.File(path, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)


@pytest.fixture(scope='module')
def keras_nets():
  """Per source: (notop model, whole model with a top, reference input, reference output)."""
  keras.utils.set_random_seed(0)
  rng = np.random.default_rng(0)
  vgg16 = keras.applications.VGG16(include_top=False, weights=None,
                                   input_shape=(SIZE, SIZE, 3))
  inputs = keras.Input((SIZE, SIZE, 3))
  twin = keras.Model(inputs, _vggface_twin(inputs), name='vggface')
  nets = {}
  for source, base, top in (('imagenet', vgg16, IMAGENET_TOP), ('vggface', twin, VGGFACE_TOP)):
    _randomize_biases(base, rng)
    images = rng.uniform(-128, 128, (2, SIZE, SIZE, 3)).astype(np.float32)
    nets[source] = (base, _with_top(base, top), images, np.asarray(base(images)))
  return nets


# name: (source, how to write it, expected h5_layout, expected skipped layers)
CASES = {
    'imagenet_keras2_notop': (  # The public Keras file's layout.
        'imagenet', lambda p, base, whole: _write_keras2_h5(p, base, 'keras2'),
        'keras2_flat_names', []),
    'imagenet_tf_keras_whole_model': (
        'imagenet', lambda p, base, whole: _write_keras2_h5(p, whole, 'tf_keras', True),
        'tf_keras (whole model)', IMAGENET_TOP),
    'imagenet_keras3_weights_h5': (
        'imagenet', lambda p, base, whole: base.save_weights(p),
        'keras3_weights_h5', []),
    'imagenet_keras3_legacy_h5': (
        'imagenet', lambda p, base, whole: _save_legacy_weights(p, base),
        'keras3_legacy_h5', []),
    'imagenet_keras3_whole_model': (
        'imagenet', lambda p, base, whole: whole.save(p),
        'keras3_legacy_h5 (whole model)', IMAGENET_TOP),
    'vggface_tf_keras_notop': (  # The public rcmalli file's layout.
        'vggface', lambda p, base, whole: _write_keras2_h5(p, base, 'tf_keras'),
        'tf_keras', []),
    'vggface_keras2_whole_model': (
        'vggface', lambda p, base, whole: _write_keras2_h5(p, whole, 'keras2', True),
        'keras2_flat_names (whole model)', VGGFACE_TOP),
    'vggface_keras3_weights_h5_with_top': (
        'vggface', lambda p, base, whole: whole.save_weights(p),
        'keras3_weights_h5', VGGFACE_TOP),
    'vggface_keras3_legacy_h5_with_top': (
        'vggface', lambda p, base, whole: _save_legacy_weights(p, whole),
        'keras3_legacy_h5', VGGFACE_TOP),
}


@pytest.fixture(scope='module')
def h5_files(keras_nets, tmp_path_factory):
  """Each case's file, written once."""
  folder = tmp_path_factory.mktemp('h5')
  files = {}
  for name, (source, write, _, _) in CASES.items():
    files[name] = folder / (name + ('.weights.h5' if 'weights_h5' in name else '.h5'))
    write(str(files[name]), *keras_nets[source][:2])
  return files


@pytest.fixture(scope='module')
def vggface_dir(h5_files, tmp_path_factory):
  """A converted VGGFace folder, for the tests of loading."""
  out = tmp_path_factory.mktemp('converted') / 'vggface'
  convert.convert('vggface', h5_files['vggface_tf_keras_notop'], out)
  return out


_vgg16_apply = jax.jit(lambda params, x: networks.VGG16Base().apply({'params': params}, x))


def _assert_reproduces_keras(params, net):
  images, expected = net[2], net[3]
  assert (expected > 0).mean() > 0.1, 'reference output mostly zero: a weak test'
  got = np.asarray(_vgg16_apply(params, images))
  assert got.shape == expected.shape
  assert np.abs(got - expected).max() / np.abs(expected).max() <= 1e-5


@pytest.mark.parametrize('case', CASES)
def test_every_layout_converts_to_params_that_reproduce_keras(case, h5_files, keras_nets,
                                                              tmp_path, convert_cli):
  source, _, layout, skipped = CASES[case]
  status, out, err = convert_cli('--source', source, '--h5', h5_files[case],
                          '--out', tmp_path / 'w')
  assert status == 0, err
  assert f'skipped layers: {", ".join(skipped) or "none"}' in out
  params, metadata = pretrained.load(tmp_path / 'w', source)
  assert metadata['h5_layout'] == layout
  assert metadata['skipped_layers'] == skipped
  _assert_reproduces_keras(params, keras_nets[source])


def test_unnamed_keras3_weights_h5_is_matched_by_layer_order(h5_files, keras_nets, tmp_path):
  # Keras 3 releases before the `name` attribute address layers by class only (conv2d_1, ...).
  path = tmp_path / 'unnamed.weights.h5'
  shutil.copy(h5_files['vggface_keras3_weights_h5_with_top'], path)
  with h5py.File(path, 'r+') as f:
    for layer in f['layers'].values():
      del layer['vars'].attrs['name']
  metadata = convert.convert('vggface', path, tmp_path / 'w')
  assert metadata['layer_map']['block1_conv2'] == 'conv2d_1'
  assert metadata['skipped_layers'] == ['dense', 'dense_1', 'dense_2']
  _assert_reproduces_keras(pretrained.load(tmp_path / 'w')[0], keras_nets['vggface'])


def test_metadata_round_trips(h5_files, vggface_dir):
  params, metadata = pretrained.load(vggface_dir, 'vggface')
  h5 = h5_files['vggface_tf_keras_notop']
  assert metadata == json.loads((vggface_dir / 'metadata.json').read_text())
  assert metadata['source'] == 'vggface'
  assert metadata['preprocessing'] == 'vggface_v1'
  assert metadata['h5_file'] == h5.name
  assert metadata['h5_sha256'] == hashlib.sha256(h5.read_bytes()).hexdigest()
  assert metadata['h5_layout'] == 'tf_keras'
  assert metadata['layer_map'] == {
      f'block{b}_conv{i}': f'conv{b}_{i}'
      for b, convs in enumerate(networks.VGG16_BLOCKS, 1) for i in range(1, len(convs) + 1)}
  assert metadata['skipped_layers'] == []
  assert metadata['architecture'] == 'vgg16'
  assert metadata['param_count'] == sum(a.size for a in jax.tree.leaves(params)) == 14_714_688
  assert metadata['created_utc'].endswith('+00:00')
  assert sorted(params) == sorted(networks.vgg16_layer_names())
  assert all(a.dtype == np.float32 for a in jax.tree.leaves(params))


def test_each_source_names_a_known_preprocessing():
  sources = {m.weights_source for m in networks.REGISTRY.values()} - {None}
  assert sources == set(pretrained.PREPROCESSING_OF_SOURCE)
  assert set(pretrained.PREPROCESSING_OF_SOURCE.values()) <= set(preprocessing.PREPROCESSINGS)


# --- Bad input: one `error:` line naming file, layer and expectation; nothing left in --out. ---

def _truncated(path, h5_files):
  data = h5_files['imagenet_keras2_notop'].read_bytes()
  path.write_bytes(data[:len(data) // 2])


def _resnet50(path, h5_files):
  keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3)).save(path)


def _edited(edit):
  """A tf-keras VGGFace file with one edit made by `edit(file)`."""
  def write(path, h5_files):
    shutil.copy(h5_files['vggface_tf_keras_notop'], path)
    with h5py.File(path, 'r+') as f:
      edit(f)
  return write


def _drop_layer(f):
  f.attrs['layer_names'] = np.array([n for n in f.attrs['layer_names'] if n != b'conv5_3'])
  del f['conv5_3']


def _reshape_kernel(f):
  del f['conv3_2/conv3_2/kernel:0']
  f['conv3_2'].create_dataset('conv3_2/kernel:0', data=np.zeros((3, 3, 256, 128), np.float32))


# name: (write the file, what the error must say besides its file name)
BAD_FILES = {
    'not_hdf5': (lambda p, _: p.write_text('<html>404</html>'), ['not a readable HDF5 file']),
    'truncated': (_truncated, ['HDF5']),
    'other_architecture': (_resnet50, ['none of the 13 VGG16 convolutions', 'conv1_conv']),
    'missing_layer': (_edited(_drop_layer), ['block5_conv3', 'not found']),
    'wrong_shape': (_edited(_reshape_kernel),
                    ['conv3_2', 'kernel', '(3, 3, 256, 128)', 'expected (3, 3, 256, 256)']),
}


@pytest.mark.parametrize('case', BAD_FILES)
def test_bad_file_is_one_error_line_and_writes_nothing(case, h5_files, tmp_path, convert_cli):
  write, says = BAD_FILES[case]
  path = tmp_path / 'in' / f'{case}.h5'
  path.parent.mkdir()
  write(path, h5_files)
  status, _, err = convert_cli('--source', 'vggface', '--h5', path, '--out', tmp_path / 'o' / 'w')
  assert status == 1
  assert err.startswith('error: ') and err.count('\n') == 1, err
  for text in [str(path), *says]:
    assert text in err
  assert not (tmp_path / 'o').exists()


def test_failed_conversion_keeps_the_existing_folder(h5_files, tmp_path, convert_cli):
  out = tmp_path / 'w'
  before = convert.convert('vggface', h5_files['vggface_tf_keras_notop'], out)
  bad = tmp_path / 'bad.h5'
  bad.write_bytes(b'not hdf5')
  assert convert_cli('--source', 'vggface', '--h5', bad, '--out', out)[0] == 1
  assert pretrained.load(out, 'vggface')[1] == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ['bad.h5', 'w']


def test_success_replaces_the_existing_folder(h5_files, tmp_path):
  out = tmp_path / 'w'
  convert.convert('vggface', h5_files['vggface_tf_keras_notop'], out)
  convert.convert('vggface', h5_files['vggface_keras2_whole_model'], out)
  assert pretrained.load(out)[1]['h5_layout'] == 'keras2_flat_names (whole model)'
  assert [p.name for p in tmp_path.iterdir()] == ['w']


def test_an_unrelated_folder_is_replaced_only_with_overwrite(h5_files, tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(convert.ConversionError,
                     match='holds notes.txt, not converted weights .no metadata.json.'):
    convert.convert('vggface', h5_files['vggface_tf_keras_notop'], tmp_path)
  assert [p.name for p in tmp_path.iterdir()] == ['notes.txt']
  convert.convert('vggface', h5_files['vggface_tf_keras_notop'], tmp_path, overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['metadata.json', 'params']


# --- An --out that holds another source's weights (or other files) is kept unless --overwrite. ---

def _metadata_of(source, converted_weights):
  """What a converted folder of `source` records (mtcnn: as a facenet-pytorch wheel's)."""
  if source == 'mtcnn':
    return {'source': 'mtcnn', 'architecture': 'mtcnn',
            'wheel_file': mtcnn.WHEEL_FILE, 'wheel_sha256': mtcnn.WHEEL_SHA256}
  return json.loads((converted_weights[source] / 'metadata.json').read_text())


def _folder_of(source, folder, converted_weights):
  """`folder` laid out as a converted folder of `source`: metadata.json and params/ (left empty:
  the checks read the metadata, and loading stops at another source's before params)."""
  (folder / 'params').mkdir(parents=True)
  (folder / 'metadata.json').write_text(json.dumps(_metadata_of(source, converted_weights)))
  return folder


def _refusal(out, held, source, converted_weights):
  metadata = _metadata_of(held, converted_weights)
  origin = metadata.get('h5_file') or metadata['wheel_file']
  sha256 = metadata.get('h5_sha256') or metadata['wheel_sha256']
  return (f'error: {out} holds {held} weights (converted from {origin}, sha256 {sha256}); '
          f'converting {source} there would replace them. Choose another --out, or pass '
          f'--overwrite to replace them.')


def test_command_refuses_to_replace_another_sources_weights(converted_weights, tmp_path):
  out = _folder_of('imagenet', tmp_path / 'weights' / 'imagenet', converted_weights)
  before = (out / 'metadata.json').read_text()
  result = subprocess.run([sys.executable, '-m', 'weights_convert', '--source', 'vggface',
                           '--h5', 'nowhere.h5', '--out', 'weights/imagenet'],
                          cwd=tmp_path, env={**os.environ, 'PYTHONPATH': str(REPO)},
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 1  # Before the h5 is even opened: it does not exist.
  assert result.stderr.splitlines()[-1] == _refusal('weights/imagenet', 'imagenet', 'vggface',
                                                    converted_weights)
  assert (out / 'metadata.json').read_text() == before
  assert sorted(p.name for p in out.parent.iterdir()) == ['imagenet']


@pytest.mark.parametrize('held,source', [('imagenet', 'vggface'), ('vggface', 'imagenet'),
                                         ('mtcnn', 'imagenet'), ('imagenet', 'mtcnn')])
def test_refusal_comes_before_any_download(held, source, converted_weights, monkeypatch,
                                           tmp_path, convert_cli):
  def fetch(*args):
    raise AssertionError(f'downloaded {args}')
  monkeypatch.setattr(download, 'fetch', fetch)
  out = _folder_of(held, tmp_path / 'w', converted_weights)
  status, _, err = convert_cli('--source', source, '--download', '--out', out)
  assert status == 1
  assert err == _refusal(out, held, source, converted_weights) + '\n'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['w']


def test_overwrite_replaces_another_sources_weights_and_the_same_source_needs_none(
    converted_weights, h5_files, keras_nets, tmp_path, convert_cli):
  out = _folder_of('imagenet', tmp_path / 'w', converted_weights)
  status, _, err = convert_cli('--source', 'vggface', '--h5', h5_files['vggface_tf_keras_notop'],
                        '--out', out, '--overwrite')
  assert status == 0, err
  assert pretrained.load(out, 'vggface')[1]['h5_layout'] == 'tf_keras'
  status, _, err = convert_cli('--source', 'vggface', '--h5',  # Converting again: no flag.
                        h5_files['vggface_keras2_whole_model'], '--out', out)
  assert status == 0, err
  params, metadata = pretrained.load(out, 'vggface')
  assert metadata['h5_layout'] == 'keras2_flat_names (whole model)'
  _assert_reproduces_keras(params, keras_nets['vggface'])
  assert [p.name for p in tmp_path.iterdir()] == ['w']


def test_a_folder_of_other_files_is_replaced_only_with_overwrite(h5_files, tmp_path, convert_cli):
  out = tmp_path / 'w'
  (out / 'runs').mkdir(parents=True)
  (out / 'notes.txt').write_text('mine')
  status, _, err = convert_cli('--source', 'vggface', '--h5', tmp_path / 'nowhere.h5',
                        '--out', out)
  assert status == 1
  assert err == (f'error: {out} holds notes.txt, runs/, not converted weights (no '
                 f'metadata.json); converting vggface there would replace them. Choose another '
                 f'--out, or pass --overwrite to replace them.\n')
  assert sorted(p.name for p in out.iterdir()) == ['notes.txt', 'runs']
  h5 = h5_files['vggface_tf_keras_notop']
  assert convert_cli('--source', 'vggface', '--h5', h5, '--out', out, '--overwrite')[0] == 0
  assert sorted(p.name for p in out.iterdir()) == ['metadata.json', 'params']
  (tmp_path / 'empty').mkdir()  # An empty folder needs no --overwrite.
  assert convert_cli('--source', 'imagenet', '--h5', h5, '--out', tmp_path / 'empty')[0] == 0


def test_sha256_pin_rejects_another_file(h5_files, tmp_path, convert_cli):
  h5 = h5_files['vggface_tf_keras_notop']
  status, _, err = convert_cli('--source', 'vggface', '--h5', h5, '--sha256', '0' * 64,
                        '--out', tmp_path / 'w')
  assert status == 1 and f'expected {"0" * 64}' in err
  assert not (tmp_path / 'w').exists()
  digest = hashlib.sha256(h5.read_bytes()).hexdigest()
  assert convert_cli('--source', 'vggface', '--h5', h5, '--sha256', digest.upper(),
              '--out', tmp_path / 'w')[0] == 0


def test_runs_as_a_module(tmp_path):
  bad = tmp_path / 'bad.h5'
  bad.write_text('nope')
  result = subprocess.run([sys.executable, '-m', 'weights_convert', '--source', 'imagenet',
                           '--h5', str(bad), '--out', str(tmp_path / 'w')],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 1
  assert result.stderr.splitlines()[-1].startswith(f'error: {bad}: not a readable HDF5 file')


def _run_module(cwd, *args):
  return subprocess.run([sys.executable, '-m', 'weights_convert', *args], cwd=cwd,
                        env={**os.environ, 'PYTHONPATH': str(REPO)}, capture_output=True,
                        text=True, timeout=120, check=False)


def test_help_lists_only_the_converters_flags(tmp_path):
  result = _run_module(tmp_path, '--help')
  assert 'Traceback' not in result.stderr
  assert 'python -m weights_convert --source vggface --download --out weights/vggface' in (
      result.stdout)
  listed = set(re.findall(r'^  (--\S+?):', result.stdout, re.MULTILINE))
  assert listed == {'--source', '--h5', '--wheel', '--pt-dir', '--tarball', '--model-dir',
                    '--[no]download', '--out', '--[no]overwrite', '--sha256', '--cache-dir'}, (
                        result.stdout)
  assert '--verbosity' not in result.stdout and '--config' not in result.stdout


@pytest.mark.parametrize('args,says', [
    (['--source', 'vggface', '--h5', 'x.h5'], 'error: --out is required'),
    (['--source', 'vggface', '--h5', 'x.h5', '--download', '--out', 'w'],
     'give exactly one of --h5 FILE, --wheel FILE, --pt-dir DIR, --tarball FILE, --model-dir DIR '
     'or --download.'),
    (['--source', 'vggface', '--nodownload', '--out', 'w'], 'give exactly one of --h5 FILE'),
    (['--source', 'vgg', '--h5', 'x.h5', '--out', 'w'],
     'flag --source=vgg: value should be one of <imagenet|vggface|mtcnn|face_resnet>'),
    (['--source', 'vggface', '--pt_dir', 'x', '--out', 'w'], 'Did you mean: pt-dir'),
])
def test_command_line_mistakes_are_one_line(args, says, tmp_path):
  result = _run_module(tmp_path, *args)
  assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and says in lines[0] and lines[0].startswith('error: '), result.stderr
  assert not any(tmp_path.iterdir())


# --- --download: never the real network; file:// URLs and an unreachable address instead. ---

@pytest.fixture
def local_urls(monkeypatch, h5_files):
  """Points each source's download address at a local file in its public file's layout."""
  files = {'imagenet': h5_files['imagenet_keras2_notop'],
           'vggface': h5_files['vggface_tf_keras_notop']}
  for source, path in files.items():
    monkeypatch.setitem(pretrained.H5_URL_OF_SOURCE, source, path.as_uri())
  return files


def test_download_offline_fails_at_once_naming_address_and_manual_route(monkeypatch, tmp_path):
  url = 'http://127.0.0.1:9/rcmalli_vggface_tf_notop_vgg16.h5'  # Nothing listens on port 9.
  monkeypatch.setitem(pretrained.H5_URL_OF_SOURCE, 'vggface', url)
  start = time.monotonic()
  with pytest.raises(download.DownloadError) as error:
    download.fetch('vggface', tmp_path / 'cache')
  assert time.monotonic() - start < download.TIMEOUT_S
  for text in [url, str(tmp_path / 'cache' / 'rcmalli_vggface_tf_notop_vgg16.h5'), '--h5 FILE']:
    assert text in str(error.value)
  assert not any((tmp_path / 'cache').iterdir())


def test_download_checks_the_published_md5(local_urls, monkeypatch, tmp_path):
  with pytest.raises(download.DownloadError, match='md5 is .* expected 6d6bbae1'):
    download.fetch('imagenet', tmp_path)
  assert not any(tmp_path.iterdir())
  md5 = hashlib.md5(local_urls['imagenet'].read_bytes()).hexdigest()
  monkeypatch.setitem(download.MD5_OF_SOURCE, 'imagenet', md5)
  path = download.fetch('imagenet', tmp_path)
  assert path.read_bytes() == local_urls['imagenet'].read_bytes()
  assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_download_checks_the_pinned_sha256_and_reuses_the_cache(local_urls, monkeypatch,
                                                                tmp_path):
  with pytest.raises(download.DownloadError, match='expected 0000'):
    download.fetch('vggface', tmp_path, sha256='0' * 64)
  assert not any(tmp_path.iterdir())
  digest = hashlib.sha256(local_urls['vggface'].read_bytes()).hexdigest()
  path = download.fetch('vggface', tmp_path, sha256=digest)
  monkeypatch.setitem(pretrained.H5_URL_OF_SOURCE, 'vggface', f'http://127.0.0.1:9/{path.name}')
  assert download.fetch('vggface', tmp_path, sha256=digest) == path


def test_download_then_convert_from_the_command_line(local_urls, keras_nets, tmp_path, convert_cli):
  status, out, err = convert_cli('--source', 'vggface', '--download', '--cache-dir',
                          tmp_path / 'cache', '--out', tmp_path / 'w')
  assert status == 0, err
  digest = hashlib.sha256(local_urls['vggface'].read_bytes()).hexdigest()
  assert digest in out
  params, metadata = pretrained.load(tmp_path / 'w', 'vggface')
  assert metadata['h5_sha256'] == digest
  _assert_reproduces_keras(params, keras_nets['vggface'])


# --- pretrained.load ---

def test_load_of_a_missing_folder_says_how_to_make_it(tmp_path):
  with pytest.raises(weights_folder.MissingWeightsError) as error:
    pretrained.load(tmp_path / 'nowhere', 'vggface')
  message = str(error.value)
  for text in [str(tmp_path / 'nowhere'),
               f'python -m weights_convert --source vggface --download --out {tmp_path}/nowhere',
               f'curl -L -o rcmalli_vggface_tf_notop_vgg16.h5 '
               f'{pretrained.H5_URL_OF_SOURCE["vggface"]}',
               '--h5 rcmalli_vggface_tf_notop_vgg16.h5']:
    assert text in message


@pytest.mark.parametrize('part', ['metadata.json', 'params'])
def test_load_of_an_incomplete_folder_is_missing_weights(part, vggface_dir, tmp_path):
  folder = tmp_path / 'w'
  shutil.copytree(vggface_dir, folder)
  (shutil.rmtree if part == 'params' else pathlib.Path.unlink)(folder / part)
  with pytest.raises(weights_folder.MissingWeightsError, match=f'{part} is missing'):
    pretrained.load(folder, 'vggface')


def test_load_of_a_metadata_json_of_no_object_is_missing_weights(vggface_dir, tmp_path):
  folder = tmp_path / 'w'
  shutil.copytree(vggface_dir, folder)
  (folder / 'metadata.json').write_text('"vggface"')
  with pytest.raises(weights_folder.MissingWeightsError, match='holds no JSON object'):
    pretrained.load(folder, 'vggface')


def test_load_of_damaged_params_is_missing_weights(vggface_dir, tmp_path):
  folder = tmp_path / 'w'
  shutil.copytree(vggface_dir, folder)
  (folder / 'params' / '_METADATA').unlink()
  with pytest.raises(weights_folder.MissingWeightsError, match='params do not restore'):
    pretrained.load(folder, 'vggface')


def test_load_refuses_another_sources_weights(vggface_dir):
  with pytest.raises(weights_folder.WeightsMismatchError, match="holds 'vggface' weights"):
    pretrained.load(vggface_dir, networks.REGISTRY['vgg16'].weights_source)


def _assert_suggests_only_safe_folders(message, source, flag='--config.weights'):
  """Every `--out` the message suggests takes `source`'s weights without --overwrite, and the
  run is told to read the folder the commands write."""
  outs = set(re.findall(r'--out (\S+)', message))
  assert len(outs) == 1, message
  out = outs.pop()
  convert.check_out(out, source)  # Raises where the command would be refused.
  return out


@pytest.mark.parametrize('held,need', [('vggface', 'imagenet'), ('imagenet', 'vggface'),
                                       ('mtcnn', 'vggface')])
def test_load_of_another_sources_weights_suggests_another_folder(held, need, converted_weights,
                                                                 monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  folder = _folder_of(held, tmp_path / 'w', converted_weights)
  with pytest.raises(weights_folder.WeightsMismatchError) as error:
    pretrained.load(folder, need)
  message = str(error.value)
  assert f"{folder} holds {held!r} weights, but this model needs {need!r} weights." in message
  assert f'{folder} holds {held} weights (converted from ' in message
  assert f'converting {need} there would replace them' in message
  assert f'--config.weights=weights/{need} and make them with' in message
  assert _assert_suggests_only_safe_folders(message, need) == f'weights/{need}'


def test_suggested_folder_skips_one_that_holds_other_weights_too(converted_weights, monkeypatch,
                                                                 tmp_path):
  monkeypatch.chdir(tmp_path)
  _folder_of('vggface', tmp_path / 'weights' / 'imagenet', converted_weights)
  with pytest.raises(weights_folder.WeightsMismatchError) as error:
    pretrained.load(tmp_path / 'weights' / 'imagenet', 'imagenet')
  message = str(error.value)
  assert '--config.weights=weights/imagenet_2 ' in message
  assert _assert_suggests_only_safe_folders(message, 'imagenet') == 'weights/imagenet_2'


def test_load_of_a_folder_of_other_files_suggests_another_folder(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'w' / 'params').mkdir(parents=True)
  with pytest.raises(weights_folder.MissingWeightsError) as error:
    pretrained.load(tmp_path / 'w', 'vggface')
  message = str(error.value)
  assert (f'{tmp_path / "w"} holds params/, not converted weights (no metadata.json); '
          f'converting vggface there would replace them') in message
  assert _assert_suggests_only_safe_folders(message, 'vggface') == 'weights/vggface'


def test_unset_weights_folder_suggests_a_free_one(converted_weights, monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  _folder_of('imagenet', tmp_path / 'weights' / 'vggface', converted_weights)
  with pytest.raises(weights_folder.MissingWeightsError) as error:
    pretrained.load('', 'vggface')
  message = str(error.value)
  assert 'pass --config.weights=weights/vggface_2.' in message
  assert _assert_suggests_only_safe_folders(message, 'vggface') == 'weights/vggface_2'


def test_convert_target_of_the_face_detector(converted_weights, monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  folder = _folder_of('vggface', tmp_path / 'w', converted_weights)
  out, held = weights_folder.convert_target(folder, 'mtcnn')
  assert out == 'weights/mtcnn' and held.startswith('holds vggface weights (converted from ')
  mtcnn_folder = _folder_of('mtcnn', tmp_path / 'm', converted_weights)
  assert weights_folder.convert_target(mtcnn_folder, 'mtcnn') == (str(mtcnn_folder), '')
  assert weights_folder.convert_target(tmp_path / 'new', 'mtcnn') == (str(tmp_path / 'new'), '')
