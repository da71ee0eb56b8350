"""gender_jax.models.face_resnet: dlib's face-recognition ResNet gives face-api's descriptors.

The weights are face-api 1.7.15's (npm pack @vladmandic/face-api@1.7.15, fetched into pytest's
folder; tests that need them skip where npm or its registry cannot be reached). The reference is
face-api itself on TF.js's CPU backend: tests/face_api_reference/descriptors.json, written by
descriptors.mjs beside it (its README says how) from eight CelebA test faces beside the checkout
(skipped where missing). The other tests use hand-made manifests and need no network.
"""
import hashlib
import json
import pathlib
import shutil
import struct
import tarfile

from flax import traverse_util
import jax
import numpy as np
import pytest

from face_api_reference import faces
from gender_jax.models import face_resnet
from gender_jax.models import weights_folder
from weights_convert import convert, download
from weights_convert import face_resnet as face_resnet_convert

REFERENCE = json.loads((pathlib.Path(__file__).parent / 'face_api_reference' /
                        'descriptors.json').read_text())
MANIFEST = face_resnet_convert.MANIFEST
MAX_ABS = 1e-4  # What a caller may rely on; measured differences are far smaller.


def _float32(x):
  return struct.unpack('<f', struct.pack('<f', x))[0]


# --- The TF.js weights format, on hand-made files. ---

def test_dequantisation_is_tfjs_decode_weights():
  """uint8/uint16 as `values[i] = v * scale + min` in JavaScript doubles, stored as float32;
  tensors back to back across a group's shards."""
  scale, low = 0.0005260649557207145, -0.07101876902229645  # face-api's conv32_down filters.
  specs = [{'name': 'a', 'shape': [2, 3], 'dtype': 'float32',
            'quantization': {'dtype': 'uint8', 'scale': scale, 'min': low}},
           {'name': 'b', 'shape': [2], 'dtype': 'float32'},
           {'name': 'c', 'shape': [3], 'dtype': 'float32',
            'quantization': {'dtype': 'uint16', 'scale': 1e-5, 'min': -0.3}}]
  q8, f32, q16 = [0, 1, 127, 128, 254, 255], [1.5, -2.25], [0, 40000, 65535]
  data = (bytes(q8) + np.asarray(f32, '<f4').tobytes() + np.asarray(q16, '<u2').tobytes())
  manifest = json.dumps([{'paths': ['s1', 's2'], 'weights': specs}])
  got = face_resnet_convert.decode_weights(manifest, {'s1': data[:5], 's2': data[5:]}, 'here')
  np.testing.assert_array_equal(got['a'], np.float32([_float32(v * scale + low) for v in q8])
                                .reshape(2, 3))
  np.testing.assert_array_equal(got['b'], np.float32(f32))
  np.testing.assert_array_equal(got['c'], np.float32([_float32(v * 1e-5 - 0.3) for v in q16]))
  assert all(v.dtype == np.float32 for v in got.values())


def _model_dir(folder, drop=(), cut=0):
  """A face-api-like model/ folder: every tensor of the network (less `drop`) as uint8 zeros, the
  .bin `cut` bytes short. Not face-api's bytes, so its sha256 differs from the pinned one."""
  flat = traverse_util.flatten_dict(face_resnet.param_shapes(), sep='/')
  specs = [{'name': name, 'shape': list(s.shape), 'dtype': 'float32',
            'quantization': {'dtype': 'uint8', 'scale': 0.01, 'min': -1.0}}
           for name, s in flat.items() if name not in drop]
  folder.mkdir(parents=True)
  (folder / MANIFEST).write_text(json.dumps([{'paths': ['face_recognition_model.bin'],
                                              'weights': specs}]))
  size = sum(int(np.prod(s['shape'])) for s in specs)
  (folder / 'face_recognition_model.bin').write_bytes(bytes(size - cut))
  return folder


def _truncated_bin(tmp):
  folder = _model_dir(tmp / 'model', cut=1000)
  return ['--model-dir', folder], [f'{folder}/face_recognition_model.bin', 'truncated?',
                                   "expected face-api's face_recognition_model"]


def _manifest_missing_a_tensor(tmp):
  folder = _model_dir(tmp / 'model', drop=('fc',))
  return ['--model-dir', folder], [f'{folder}/{MANIFEST}', 'no tensor fc']


def _shard_missing(tmp):
  folder = _model_dir(tmp / 'model')
  (folder / 'face_recognition_model.bin').unlink()
  return ['--model-dir', folder], [f'{folder}/face_recognition_model.bin', 'cannot read']


def _not_a_manifest(tmp):
  folder = _model_dir(tmp / 'model')
  (folder / MANIFEST).write_text('<html>404</html>')
  return ['--model-dir', folder], [f'{folder}/{MANIFEST}', 'not a TF.js weights manifest']


def _other_bytes_than_face_apis(tmp):
  folder = _model_dir(tmp / 'model')  # Well formed: only the pinned sha256 tells.
  return ['--model-dir', folder], [f'{folder}/{MANIFEST}: sha256 is', "(face-api 1.7.15's)",
                                   'damaged']


def _not_a_tarball(tmp):
  (tmp / 'x.tgz').write_text('<html>404</html>')
  return ['--tarball', tmp / 'x.tgz'], [f'{tmp}/x.tgz', 'not a complete npm tarball']


def _truncated_tarball(tmp):
  folder = _model_dir(tmp / 'model')
  with tarfile.open(tmp / 'x.tgz', 'w:gz') as tar:
    tar.add(folder, 'package/model')
  data = (tmp / 'x.tgz').read_bytes()
  (tmp / 'x.tgz').write_bytes(data[:len(data) // 2])
  return ['--tarball', tmp / 'x.tgz'], [f'{tmp}/x.tgz', 'not a complete npm tarball']


def _wheel_for_face_resnet(tmp):
  return ['--wheel', tmp / 'x.whl'], ['--wheel is for --source mtcnn', '--tarball FILE']


# name: make the input in a tmp folder -> (arguments, what the error line must say).
BAD_INPUTS = {f.__name__[1:]: f for f in (
    _truncated_bin, _manifest_missing_a_tensor, _shard_missing, _not_a_manifest,
    _other_bytes_than_face_apis, _not_a_tarball, _truncated_tarball, _wheel_for_face_resnet)}


@pytest.mark.parametrize('case', BAD_INPUTS)
def test_bad_input_is_one_error_line_and_writes_nothing(case, tmp_path, convert_cli):
  (tmp_path / 'in').mkdir()
  args, says = BAD_INPUTS[case](tmp_path / 'in')
  status, _, err = convert_cli('--source', 'face_resnet', *args, '--out', tmp_path / 'o' / 'w')
  assert status == 1
  assert err.startswith('error: ') and err.count('\n') == 1, err
  for text in says:
    assert text in err
  assert not (tmp_path / 'o').exists()


def test_face_resnet_inputs_are_refused_for_other_sources(tmp_path, convert_cli):
  status, _, err = convert_cli('--source', 'mtcnn', '--tarball', tmp_path / 'x.tgz',
                               '--out', tmp_path / 'w')
  assert status == 1 and '--tarball is for --source face_resnet' in err


def test_download_offline_names_the_manual_route(monkeypatch, tmp_path):
  def offline(spec, folder, timeout_s):
    raise OSError(f'npm pack {spec}: FetchError: request failed')
  monkeypatch.setattr(download, '_npm_pack', offline)
  with pytest.raises(download.DownloadError, match='--source face_resnet --tarball FILE'):
    download.fetch('face_resnet', tmp_path / 'cache')
  assert not any((tmp_path / 'cache').iterdir())


# --- The network. ---

def test_params_are_face_apis_tensors_by_name_and_shape():
  flat = traverse_util.flatten_dict(face_resnet.param_shapes(), sep='/')
  assert set(flat) == set(REFERENCE['weights_sha256'])  # face-api's getParamList, in Node.
  assert flat['conv32_down/conv/filters'].shape == (7, 7, 3, 32)
  assert flat['conv256_down/conv1/conv/filters'].shape == (3, 3, 128, 256)
  assert flat['fc'].shape == (256, 128)
  assert sum(s.size for s in flat.values()) == 5_614_592
  assert sum(name.endswith('/filters') for name in flat) == 29


def test_descriptor_is_fc_of_encode_and_normalisation_can_be_left_to_the_caller():
  net = face_resnet.FaceResNet()
  images = np.random.default_rng(0).integers(0, 256, (2, 150, 150, 3), np.uint8)
  params = net.init(jax.random.key(0), images)['params']
  features = net.apply({'params': params}, images, method='encode')
  descriptors = net.apply({'params': params}, images)
  assert features.shape == (2, 256) and descriptors.shape == (2, 128)
  np.testing.assert_allclose(descriptors, features @ params['fc'], atol=1e-6)
  raw = face_resnet.FaceResNet(normalize_input=False)
  np.testing.assert_array_equal(
      raw.apply({'params': params}, face_resnet.preprocess(images)), descriptors)


def test_load_of_a_missing_folder_names_it_and_the_command(tmp_path):
  with pytest.raises(weights_folder.MissingWeightsError) as error:
    face_resnet.load_params(tmp_path / 'nowhere')
  message = str(error.value)
  assert '\n' not in message
  assert (f'python -m weights_convert --source face_resnet --download --out {tmp_path}/nowhere'
          in message)


def test_load_refuses_other_weights(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'params').mkdir()
  (tmp_path / 'metadata.json').write_text('{"source": "mtcnn", "architecture": "mtcnn"}')
  with pytest.raises(weights_folder.WeightsMismatchError) as error:
    face_resnet.load_params(tmp_path)
  message = str(error.value)
  assert '\n' not in message and "holds 'mtcnn' weights" in message
  assert f'--out {tmp_path} ' not in message  # That would replace the mtcnn weights.


# --- face-api's own weights and descriptors. ---

@pytest.fixture(scope='module')
def tarball(tmp_path_factory):
  """face-api 1.7.15's npm tarball, fetched with `npm pack` as --download does (pinned sha256)."""
  try:
    return download.fetch('face_resnet', tmp_path_factory.mktemp('npm'), timeout_s=60)
  except download.DownloadError as e:
    if isinstance(e.__cause__, OSError):  # npm missing or offline; another file is a failure.
      pytest.skip(f'npm could not fetch face-api 1.7.15 ({e.__cause__})')
    raise


@pytest.fixture(scope='module')
def weights(tarball, tmp_path_factory):  # pylint: disable=redefined-outer-name
  out = tmp_path_factory.mktemp('face_resnet') / 'weights'
  face_resnet_convert.convert_face_resnet(out, tarball=tarball)
  return out


def test_conversion_is_tfjs_decoding_bit_for_bit(weights):  # pylint: disable=redefined-outer-name
  params, metadata = face_resnet.load_params(weights)
  got = {name: hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
         for name, value in traverse_util.flatten_dict(params, sep='/').items()}
  assert got == REFERENCE['weights_sha256']
  assert metadata['file_sha256'] == REFERENCE['model_sha256']
  assert metadata['weights_sha256'] == REFERENCE['model_sha256'][face_resnet_convert.SHARD]
  assert metadata['tarball_sha256'] == face_resnet_convert.TARBALL_SHA256
  assert metadata['param_count'] == 5_614_592 and metadata['version'] == '1.7.15'
  assert metadata['input']['mean_rgb'] == [122.782, 117.001, 104.298]


def test_descriptors_equal_face_apis_on_real_faces(weights, celeba_gender_dir):  # pylint: disable=redefined-outer-name
  images = faces.load(celeba_gender_dir)
  digests = [hashlib.sha256(face.tobytes()).hexdigest() for face in images]
  assert digests == REFERENCE['input_sha256'], (
      'the 150x150 faces differ from those descriptors.json was computed on (another Pillow or '
      'libjpeg?); regenerate it as tests/face_api_reference/README.md says')
  params, _ = face_resnet.load_params(weights)
  got = np.asarray(jax.jit(face_resnet.FaceResNet().apply)({'params': params}, images))
  error = np.abs(got - np.float32(REFERENCE['descriptors'])).max(axis=1)
  assert len(error) == 8 and (error < MAX_ABS).all(), error


def test_download_looks_in_the_cache_first(tarball, tmp_path, convert_cli):  # pylint: disable=redefined-outer-name
  (tmp_path / 'cache').mkdir()
  shutil.copy(tarball, tmp_path / 'cache')
  status, out, err = convert_cli('--source', 'face_resnet', '--download', '--cache-dir',
                                 tmp_path / 'cache', '--out', tmp_path / 'w')
  assert status == 0, err
  assert f'sha256 {face_resnet_convert.TARBALL_SHA256}' in out
  assert face_resnet.load_params(tmp_path / 'w')[1]['tarball_file'] == tarball.name


def test_model_dir_gives_the_tarballs_params(tarball, weights, tmp_path):  # pylint: disable=redefined-outer-name
  with tarfile.open(tarball) as tar:
    tar.extractall(tmp_path, members=[m for m in tar.getmembers()
                                      if m.name.startswith('package/model/face_recognition')],
                   filter='data')
  metadata = face_resnet_convert.convert_face_resnet(tmp_path / 'w',
                                                     model_dir=tmp_path / 'package' / 'model')
  a, b = (traverse_util.flatten_dict(face_resnet.load_params(w)[0])
          for w in (weights, tmp_path / 'w'))
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  assert metadata['file_sha256'] == REFERENCE['model_sha256']
  # Both routes record the same sha256 for the run's record: the weights are the same.
  assert (weights_folder.source_sha256(metadata) ==
          weights_folder.source_sha256(face_resnet.load_params(weights)[1]))


def test_convert_refuses_to_replace_other_files(tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(convert.ConversionError, match='pass --overwrite'):
    face_resnet_convert.convert_face_resnet(tmp_path, model_dir=tmp_path / 'model')


def test_chip_template_is_dlibs_mean_face_at_padding_a_quarter():
  # dlib's mean face shape (image_transforms/interpolation.h, points 17-67) at the points MTCNN
  # marks: the six points of each eye (36-41, 42-47), the nose tip (30), the mouth corners (48, 54).
  x = {36: 0.121737, 37: 0.187122, 38: 0.265825, 39: 0.334606, 40: 0.260918, 41: 0.182743,
       42: 0.645647, 43: 0.714428, 44: 0.793132, 45: 0.858516, 46: 0.79751, 47: 0.719335,
       30: 0.490127, 48: 0.254149, 54: 0.726104}
  y = {36: 0.216423, 37: 0.178758, 38: 0.179852, 39: 0.231733, 40: 0.245099, 41: 0.244077,
       42: 0.231733, 43: 0.179852, 44: 0.178758, 45: 0.216423, 46: 0.244077, 47: 0.245099,
       30: 0.515625, 48: 0.780233, 54: 0.780233}
  points = [np.mean([(x[i], y[i]) for i in eye], axis=0)
            for eye in (range(36, 42), range(42, 48))] + [(x[i], y[i]) for i in (30, 48, 54)]
  expected = (0.25 + np.asarray(points)) / 1.5
  np.testing.assert_allclose(face_resnet.CHIP_TEMPLATE, expected.ravel(), atol=1e-6)
