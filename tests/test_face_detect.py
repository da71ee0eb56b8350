"""gender_jax.face_detect: MTCNN in Flax finds the faces facenet-pytorch's MTCNN finds.

The reference is facenet-pytorch 2.6.0 on a CPU torch (.ci/run installs both); tests that need
it skip where it is missing. Its weights reach gender_jax through `python -m weights_convert
--source mtcnn`, read without torch. Photos: CelebA crops and UTKFace chips beside the checkout
(skipped where missing), scikit-image's astronaut and a collage of five faces at 48-200 px.
"""
import hashlib
import importlib.util
import pathlib
import pickle
import shutil
import zipfile

from flax import traverse_util
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

import facenet_reference
from gender_jax.faces import boxes as boxes_lib
from gender_jax.faces import detect
from gender_jax.faces import mtcnn
from gender_jax.faces import pyramid
from gender_jax.models import pretrained
from gender_jax.models import weights_folder
from weights_convert import download, torch_legacy
from weights_convert import mtcnn as mtcnn_convert

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'
# Parity targets (what a caller may rely on); measured differences are ~1e-4 px and 0.
MAX_PX, MAX_SCORE = 1.0, 1e-4


def _torch():
  return pytest.importorskip('torch', reason='torch CPU is the reference (.ci/run installs it)')


@pytest.fixture(scope='module')
def pt_dir():
  """The installed facenet-pytorch's weight files."""
  spec = importlib.util.find_spec('facenet_pytorch')
  if spec is None:
    pytest.skip('facenet-pytorch is not installed (.ci/run: pip install --no-deps '
                'facenet-pytorch==2.6.0)')
  return pathlib.Path(spec.origin).parent / 'data'


@pytest.fixture(scope='module')
def reference(pt_dir):  # pylint: disable=unused-argument,redefined-outer-name
  """facenet-pytorch's MTCNN with its defaults; boxes in its detection order (not largest
  first, which MTCNN() defaults to only for its cropping)."""
  torch = _torch()
  if importlib.util.find_spec('torchvision') is None:  # Not imported: import_mtcnn does that.
    pytest.skip('torchvision is not installed; facenet-pytorch needs it (.ci/run installs it)')
  mtcnn_class = facenet_reference.import_mtcnn()
  # One thread: on a busy machine torch's threads wait for each other, up to 17x slower.
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield mtcnn_class(select_largest=False)
  torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def detector(mtcnn_weights):
  return detect.load_detector(mtcnn_weights)


@pytest.fixture(scope='module')
def params(mtcnn_weights):
  return mtcnn.load_params(mtcnn_weights)[0]


def _photos(folder, pattern, count):
  root = SHARED_DATA / folder
  paths = sorted(root.glob(pattern))
  if not paths:
    pytest.skip(f'no photos at {root}/{pattern} (the shared data beside the checkout)')
  step = max(1, len(paths) // count)
  return [np.asarray(Image.open(p).convert('RGB')) for p in paths[::step][:count]]


def _collage():
  """Five UTKFace-like faces at 200, 120, 90, 64 and 48 px on a grey canvas: several faces,
  several pyramid levels. Falls back to the astronaut's face where UTKFace is missing."""
  skimage_data = pytest.importorskip('skimage.data', reason='scikit-image ships the astronaut')
  paths = sorted((SHARED_DATA / 'utkface_sample').glob('*/*.jpg'))[::97][:5]
  faces = ([Image.open(p).convert('RGB') for p in paths] or
           [Image.fromarray(skimage_data.astronaut()[30:210, 135:315])] * 5)
  canvas = np.full((360, 480, 3), 90, np.uint8)
  for face, (y, x, size) in zip(faces * 5, [(10, 10, 200), (30, 250, 120), (220, 20, 90),
                                            (200, 300, 64), (150, 400, 48)]):
    canvas[y:y + size, x:x + size] = np.asarray(face.resize((size, size), Image.BILINEAR))
  return canvas


def _reference_faces(reference, image):  # pylint: disable=redefined-outer-name
  boxes, scores, points = reference.detect(image, landmarks=True)
  if boxes is None:
    return detect.no_faces()
  return detect.Faces(*(np.asarray(a, np.float32) for a in (boxes, scores, points)))


def _assert_same_faces(got, expected):
  """Same count; each expected face has one of ours within MAX_PX and MAX_SCORE."""
  assert len(got.boxes) == len(expected.boxes)
  for box, score, points in zip(*expected):
    i = np.argmin(np.abs(got.boxes - box).max(axis=1))
    assert np.abs(got.boxes[i] - box).max() <= MAX_PX
    assert np.abs(got.landmarks[i] - points).max() <= MAX_PX
    assert abs(got.scores[i] - score) <= MAX_SCORE


def _assert_parity(detector, reference, images):  # pylint: disable=redefined-outer-name
  found = detector.detect(images)
  assert len(found) == len(images)
  for image, got in zip(images, found):
    _assert_same_faces(got, _reference_faces(reference, image))


# --- Reading the .pt files without torch. ---

def test_reader_reads_facenets_files_as_torch_load_does(pt_dir):  # pylint: disable=redefined-outer-name
  torch = _torch()
  for name in mtcnn_convert.PT_FILES.values():
    ours, theirs = torch_legacy.load(pt_dir / name), torch.load(pt_dir / name)
    assert list(ours) == list(theirs)
    for key, tensor in theirs.items():
      assert ours[key].dtype == np.float32 and ours[key].shape == tuple(tensor.shape)
      np.testing.assert_array_equal(ours[key], tensor.numpy())


def test_reader_reads_any_legacy_state_dict(tmp_path):
  torch = _torch()
  state = {'strided': torch.arange(24).reshape(4, 6)[:, 1:5:2],  # Offset and strides.
           'transposed': torch.randn(3, 5).t(),
           'shared_storage': torch.arange(10, dtype=torch.int32)[5:],
           'half': torch.randn(4).half(), 'bool': torch.tensor([True, False]),
           'double': torch.randn(2, 2, dtype=torch.float64), 'empty': torch.zeros(0, 3)}
  torch.save(state, tmp_path / 'x.pt', _use_new_zipfile_serialization=False)
  got = torch_legacy.load(tmp_path / 'x.pt')
  for key, tensor in state.items():
    assert got[key].dtype == tensor.numpy().dtype
    np.testing.assert_array_equal(got[key], tensor.numpy())


class _Exploit:
  def __reduce__(self):
    return (shutil.rmtree, ('/nonexistent-folder-gender-jax',))


def test_reader_runs_no_code_from_the_file(tmp_path):
  path = tmp_path / 'evil.pt'
  with open(path, 'wb') as f:
    for part in (torch_legacy.MAGIC_NUMBER, torch_legacy.PROTOCOL_VERSION,
                 {'little_endian': True}, {'weight': _Exploit()}, []):
      pickle.dump(part, f, protocol=2)
  with pytest.raises(torch_legacy.TorchFileError, match='shutil.rmtree'):
    torch_legacy.load(path)


def test_reader_refuses_zip_and_truncated_files(pt_dir, tmp_path):  # pylint: disable=redefined-outer-name
  data = (pt_dir / 'pnet.pt').read_bytes()
  with pytest.raises(torch_legacy.TorchFileError, match='truncated'):
    torch_legacy.loads(data[:-100])
  with pytest.raises(torch_legacy.TorchFileError, match='zip-format'):
    torch_legacy.loads(b'PK\x03\x04' + data)
  with pytest.raises(torch_legacy.TorchFileError, match='magic number'):
    torch_legacy.loads(pickle.dumps({'weight': 1}))


# --- Conversion: python -m weights_convert --source mtcnn. ---

def _write_wheel(path, pt_dir, members=None):  # pylint: disable=redefined-outer-name
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('facenet_pytorch/__init__.py', '')
    info = 'facenet_pytorch-2.6.0.dist-info'  # What pip reads of a wheel it fetches.
    z.writestr(f'{info}/METADATA', 'Metadata-Version: 2.1\nName: facenet-pytorch\nVersion: 2.6.0\n')
    z.writestr(f'{info}/WHEEL', 'Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n')
    z.writestr(f'{info}/RECORD', '')
    for name in (mtcnn_convert.PT_FILES.values() if members is None else members):
      z.write(pt_dir / name, mtcnn_convert.WHEEL_MEMBER.format(name))
  return path


@pytest.fixture(scope='module')
def facenet_wheel(pt_dir, tmp_path_factory):  # pylint: disable=redefined-outer-name
  """A wheel laid out as facenet-pytorch's, holding the installed weight files."""
  return _write_wheel(tmp_path_factory.mktemp('wheel') / 'facenet_pytorch-2.6.0-py3-none-any.whl',
                      pt_dir)


def test_wheel_and_pt_dir_give_the_same_params(facenet_wheel, pt_dir, tmp_path, convert_cli):  # pylint: disable=redefined-outer-name
  status, out, err = convert_cli('--source', 'mtcnn', '--wheel', facenet_wheel,
                          '--out', tmp_path / 'a')
  assert status == 0, err
  wheel_sha = hashlib.sha256(facenet_wheel.read_bytes()).hexdigest()
  assert f'sha256 {wheel_sha}' in out
  assert convert_cli('--source', 'mtcnn', '--pt-dir', pt_dir, '--out', tmp_path / 'b')[0] == 0
  (a, meta_a), (b, meta_b) = (mtcnn.load_params(tmp_path / n) for n in 'ab')
  for key, value in traverse_util.flatten_dict(a).items():
    np.testing.assert_array_equal(value, traverse_util.flatten_dict(b)[key])
  pt_sha = {n: hashlib.sha256((pt_dir / n).read_bytes()).hexdigest()
            for n in mtcnn_convert.PT_FILES.values()}
  assert meta_a['pt_sha256'] == meta_b['pt_sha256'] == pt_sha
  assert meta_a['source'] == meta_a['architecture'] == 'mtcnn'
  assert meta_a['wheel_sha256'] == wheel_sha and meta_b['pt_dir'] == str(pt_dir)
  assert meta_a['param_count'] == 495_850


def _pip_index(monkeypatch, folder):
  """pip's own configuration, as a user's would set it: no index, wheels from `folder`."""
  monkeypatch.setenv('PIP_NO_INDEX', '1')
  monkeypatch.setenv('PIP_FIND_LINKS', str(folder))


def test_download_fetches_the_pinned_wheel_with_pip_and_converts_it(facenet_wheel, monkeypatch,  # pylint: disable=redefined-outer-name
                                                                    tmp_path, convert_cli):
  _pip_index(monkeypatch, facenet_wheel.parent)
  with pytest.raises(download.DownloadError, match='of facenet-pytorch 2.6.0 as published'):
    download.fetch('mtcnn', tmp_path / 'cache')  # Not the real wheel: its hash differs.
  assert not any((tmp_path / 'cache').iterdir())
  digest = hashlib.sha256(facenet_wheel.read_bytes()).hexdigest()
  monkeypatch.setitem(download.SHA256_OF_SOURCE, 'mtcnn', digest)
  status, _, err = convert_cli('--source', 'mtcnn', '--download', '--cache-dir',
                               tmp_path / 'cache', '--out', tmp_path / 'w')
  assert status == 0, err
  assert [p.name for p in (tmp_path / 'cache').iterdir()] == [facenet_wheel.name]
  assert mtcnn.load_params(tmp_path / 'w')[1]['wheel_sha256'] == digest


def test_download_offline_names_the_manual_route(monkeypatch, tmp_path):
  (tmp_path / 'no_wheels').mkdir()
  _pip_index(monkeypatch, tmp_path / 'no_wheels')
  with pytest.raises(download.DownloadError, match='--source mtcnn --wheel FILE'):
    download.fetch('mtcnn', tmp_path / 'cache')
  assert not any((tmp_path / 'cache').iterdir())


def _pt_dir_with(tmp, pt_dir, name, data=None):  # pylint: disable=redefined-outer-name
  """A copy of pt_dir with `name` replaced by `data` (deleted where None)."""
  shutil.copytree(pt_dir, tmp / 'data')
  if data is None:
    (tmp / 'data' / name).unlink()
  else:
    (tmp / 'data' / name).write_bytes(data)
  return tmp / 'data'


def _missing_pt_file(tmp, pt_dir):  # pylint: disable=redefined-outer-name
  folder = _pt_dir_with(tmp, pt_dir, 'onet.pt')
  return ['--pt-dir', folder], [str(folder / 'onet.pt'), 'cannot read']


def _text_as_pt_file(tmp, pt_dir):  # pylint: disable=redefined-outer-name
  folder = _pt_dir_with(tmp, pt_dir, 'pnet.pt', b'<html>404</html>')
  return ['--pt-dir', folder], [str(folder), 'pnet.pt', 'legacy .pt']


def _other_network_in_a_file(tmp, pt_dir):  # pylint: disable=redefined-outer-name
  folder = _pt_dir_with(tmp, pt_dir, 'rnet.pt', (pt_dir / 'pnet.pt').read_bytes())
  return ['--pt-dir', folder], [str(folder), 'rnet.pt', 'conv1.weight', 'shape']


def _not_a_wheel(tmp, pt_dir):  # pylint: disable=redefined-outer-name,unused-argument
  (tmp / 'x.whl').write_text('<html>404</html>')
  return ['--wheel', tmp / 'x.whl'], [str(tmp / 'x.whl'), 'not a wheel (zip) file']


def _other_wheel(tmp, pt_dir):  # pylint: disable=redefined-outer-name
  wheel = _write_wheel(tmp / 'other.whl', pt_dir, members=['pnet.pt'])
  return ['--wheel', wheel], [str(wheel), 'facenet_pytorch/data/rnet.pt', 'a facenet-pytorch wheel']


def _wrong_sha256(tmp, pt_dir):  # pylint: disable=redefined-outer-name
  wheel = _write_wheel(tmp / 'w.whl', pt_dir)
  return ['--wheel', wheel, '--sha256', '0' * 64], [str(wheel), f'expected {"0" * 64}']


def _h5_for_mtcnn(tmp, pt_dir):  # pylint: disable=redefined-outer-name,unused-argument
  return ['--h5', tmp / 'x.h5'], ['--h5 is for the VGG16 sources', '--wheel FILE']


# name: make the input in a tmp folder -> (arguments, what the error line must say).
BAD_INPUTS = {f.__name__[1:]: f for f in (
    _missing_pt_file, _text_as_pt_file, _other_network_in_a_file, _not_a_wheel, _other_wheel,
    _wrong_sha256, _h5_for_mtcnn)}


@pytest.mark.parametrize('case', BAD_INPUTS)
def test_bad_input_is_one_error_line_and_writes_nothing(case, pt_dir, tmp_path, convert_cli):  # pylint: disable=redefined-outer-name
  (tmp_path / 'in').mkdir()
  args, says = BAD_INPUTS[case](tmp_path / 'in', pt_dir)
  status, _, err = convert_cli('--source', 'mtcnn', *args, '--out', tmp_path / 'o' / 'w')
  assert status == 1
  assert err.startswith('error: ') and err.count('\n') == 1, err
  for text in says:
    assert text in err
  assert not (tmp_path / 'o').exists()


def test_mtcnn_inputs_are_refused_for_vgg16_sources(facenet_wheel, tmp_path, convert_cli):  # pylint: disable=redefined-outer-name
  status, _, err = convert_cli('--source', 'vggface', '--wheel', facenet_wheel,
                        '--out', tmp_path / 'w')
  assert status == 1 and '--wheel is for --source mtcnn' in err


# --- Loading a converted folder. ---

def test_load_of_a_missing_folder_names_it_and_the_command(tmp_path):
  with pytest.raises(weights_folder.MissingWeightsError) as error:
    detect.load_detector(tmp_path / 'nowhere')
  message = str(error.value)
  assert '\n' not in message
  assert f'python -m weights_convert --source mtcnn --download --out {tmp_path}/nowhere' in message


def test_load_of_no_folder_or_a_metadata_json_of_no_object_says_so(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # An empty setting is not the working directory.
  with pytest.raises(weights_folder.MissingWeightsError,
                     match='--config.face_detector_weights is empty.*--out weights/mtcnn'):
    detect.load_detector('')
  (tmp_path / 'w' / 'params').mkdir(parents=True)
  (tmp_path / 'w' / 'metadata.json').write_text('[]')
  with pytest.raises(weights_folder.MissingWeightsError, match='holds no JSON object'):
    detect.load_detector(tmp_path / 'w')


def test_load_refuses_other_weights_and_suggests_another_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'params').mkdir()
  (tmp_path / 'metadata.json').write_text('{"source": "vggface", "architecture": "vgg16"}')
  with pytest.raises(weights_folder.WeightsMismatchError) as error:
    mtcnn.load_params(tmp_path)
  message = str(error.value)
  assert '\n' not in message and "holds 'vggface' weights" in message
  assert f'--out {tmp_path} ' not in message  # That would replace the vggface weights.
  assert '--config.face_detector_weights=weights/mtcnn and make them with' in message


def test_vgg16_loading_refuses_mtcnn_weights(mtcnn_weights):
  with pytest.raises(weights_folder.WeightsMismatchError, match="holds 'mtcnn' weights"):
    pretrained.load(mtcnn_weights, 'vggface')


# --- The pieces, against torch. ---

def test_networks_equal_facenet_pytorchs(params, reference):  # pylint: disable=redefined-outer-name
  torch = _torch()
  rng = np.random.default_rng(0)
  # P-Net on an odd size: ceil-mode pooling's partial window; R-/O-Net: the flatten order.
  for name, net, size in (('pnet', mtcnn.PNet(), (31, 26)), ('rnet', mtcnn.RNet(),
                          (24, 24)), ('onet', mtcnn.ONet(), (48, 48))):
    x = rng.uniform(-1, 1, (3, *size, 3)).astype(np.float32)
    with torch.no_grad():
      expected = getattr(reference, name)(torch.as_tensor(x).permute(0, 3, 1, 2))
    got = net.apply({'params': params[name]}, x)
    for g, e in zip(got, expected):
      e = e.numpy()
      if e.ndim == 4:
        e = e.transpose(0, 2, 3, 1)
      assert g.shape == e.shape
      np.testing.assert_allclose(g, e, atol=1e-5)


@pytest.mark.parametrize('size', [(301, 157), (45, 33)])  # Tiled; padded to a size bucket.
def test_pnet_in_tiles_and_buckets_equals_pnet_on_the_whole_level(size, params):  # pylint: disable=redefined-outer-name
  level = np.random.default_rng(1).uniform(-1, 1, (2, *size, 3)).astype(np.float32)
  reg, prob = mtcnn.PNet().apply({'params': params['pnet']}, level)
  # Padded below and right to a size bucket, as the cascade pads its images.
  num, h, w = level.shape[:3]
  padded = np.zeros((num, pyramid.bucket(h, 8, 12), pyramid.bucket(w, 8, 12), 3), np.float32)
  padded[:, :h, :w] = level
  got_prob, got_reg = detect._pnet(params['pnet'], padded, np.tile(np.int32([h, w]), (num, 1)))  # pylint: disable=protected-access
  cells = (slice(None), slice(pyramid.pnet_cells(h)), slice(pyramid.pnet_cells(w)))
  got_prob, got_reg = got_prob[cells], got_reg[cells]
  np.testing.assert_allclose(got_prob, prob[..., 1], atol=1e-5)
  np.testing.assert_allclose(got_reg, reg, atol=1e-5)


def test_area_resize_is_torchs_area_interpolation_bit_for_bit():
  # The summed-area resizes of the pyramid (whole images) and of the crops between the networks.
  torch = _torch()
  images = np.random.default_rng(2).integers(0, 256, (3, 109, 89, 3), dtype=np.uint8)
  table = detect.summed_area(images)
  as_torch = torch.as_tensor(images).permute(0, 3, 1, 2).float()
  for h, w in [(66, 54), (17, 14), (200, 150)]:  # Pyramid levels, and an enlargement.
    expected = torch.nn.functional.interpolate(as_torch, size=(h, w), mode='area')
    got = detect._shared_area_resize(table, detect.area_windows(109, h),  # pylint: disable=protected-access
                                     detect.area_windows(89, w))
    np.testing.assert_array_equal(got, expected.permute(0, 2, 3, 1).numpy())
  crops = [(0, 5, 80, 7, 70), (2, 30, 50, 0, 89), (1, 100, 109, 80, 89)]  # image, y, ey, x, ex
  image, y, ey, x, ex = (np.array(c) for c in zip(*crops))
  got = detect._crop_area_resize(table.reshape(-1, 3), *table.shape[1:3], image,  # pylint: disable=protected-access
                                 detect.area_windows(ey - y, 24, y),
                                 detect.area_windows(ex - x, 24, x))
  for g, (i, y0, y1, x0, x1) in zip(got, crops):
    expected = torch.nn.functional.interpolate(as_torch[i:i + 1, :, y0:y1, x0:x1], (24, 24),
                                               mode='area')
    np.testing.assert_array_equal(g, expected[0].permute(1, 2, 0).numpy())


def _random_boxes(rng, n):
  corner = rng.uniform(0, 100, (n, 2)).astype(np.float32)
  boxes = np.concatenate([corner, corner + rng.uniform(5, 40, (n, 2))], axis=1)
  scores = rng.choice(np.float32([0.6, 0.8, 0.9, 1.0]), n) + rng.uniform(0, 1e-3, n) * (
      rng.uniform(size=n) < 0.5)  # Half of them tied.
  return boxes.astype(np.float32), scores.astype(np.float32)


@pytest.mark.parametrize('pairs', [1 << 26, 1 << 18])  # All pairs at once; 256 columns at once.
def test_nms_is_torchvisions(reference, pairs, monkeypatch):  # pylint: disable=unused-argument,redefined-outer-name
  torch = _torch()
  import torchvision  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(boxes_lib, 'NMS_PAIRS', pairs)
  rng = np.random.default_rng(3)
  for threshold, n in ((0.5, 64), (0.7, 1024)):
    boxes, scores = _random_boxes(rng, n)
    expected = torchvision.ops.nms(torch.as_tensor(boxes), torch.as_tensor(scores), threshold)
    # The cascade's device NMS: which boxes it keeps, in torchvision's order (by score, stable).
    kept = np.flatnonzero(boxes_lib.nms(jnp.asarray(boxes), [-jnp.asarray(scores)], threshold,
                                        jnp.ones(len(scores), bool)))
    np.testing.assert_array_equal(kept[np.argsort(-scores[kept], kind='stable')],
                                  expected.numpy())


def test_nms_min_is_facenet_pytorchs(reference):  # pylint: disable=unused-argument,redefined-outer-name
  from facenet_pytorch.models.utils import detect_face  # pylint: disable=g-import-not-at-top
  boxes, scores = _random_boxes(np.random.default_rng(4), 300)
  np.testing.assert_array_equal(detect.nms_min(boxes, scores, 0.7),
                                detect_face.nms_numpy(boxes, scores, 0.7, 'Min'))


# --- Whole detections against facenet-pytorch's MTCNN. ---

def test_same_faces_as_facenet_pytorch_on_celeba_crops(detector, reference):  # pylint: disable=redefined-outer-name
  _assert_parity(detector, reference, _photos('celeba_gender', 'test/*/*.jpg', 6))


def test_same_faces_as_facenet_pytorch_on_utkface_chips(detector, reference):  # pylint: disable=redefined-outer-name
  _assert_parity(detector, reference, _photos('utkface_sample', '*/*.jpg', 6))


def test_same_faces_as_facenet_pytorch_on_photos_with_one_and_five_faces(detector, reference):  # pylint: disable=redefined-outer-name
  skimage_data = pytest.importorskip('skimage.data', reason='scikit-image ships the astronaut')
  images = [skimage_data.astronaut(), _collage(), skimage_data.coffee()]  # 1, 5 and 0 faces.
  _assert_parity(detector, reference, images)
  assert [len(f.boxes) for f in detector.detect(images)] == [1, 5, 0]


# --- The API. ---

def test_a_batch_array_equals_images_one_at_a_time(detector):  # pylint: disable=redefined-outer-name
  images = _photos('celeba_gender', 'valid/*/*.jpg', 5)
  batched = detector.detect(np.stack(images))
  for image, got in zip(images, batched):
    one = detector.detect([image])[0]
    assert len(one.boxes) == len(got.boxes)
    for a, b in zip(got, one):
      np.testing.assert_allclose(a, b, atol=1e-4)


def test_images_of_several_sizes_keep_their_order(detector):  # pylint: disable=redefined-outer-name
  celeba = _photos('celeba_gender', 'train/*/*.jpg', 2)
  blank = np.full((150, 120, 3), 128, np.uint8)
  images = [celeba[0], blank, _collage(), celeba[1], blank[:10, :10]]
  for image, got in zip(images, detector.detect(images)):
    one = detector.detect([image])[0]
    assert len(one.boxes) == len(got.boxes)
    for a, b in zip(got, one):
      np.testing.assert_allclose(a, b, atol=1e-4)


def test_faces_are_float32_arrays_highest_score_first(detector):  # pylint: disable=redefined-outer-name
  found = detector.detect([_collage(), np.zeros((64, 64, 3), np.uint8)])
  for faces, n in zip(found, (5, 0)):
    assert isinstance(faces, detect.Faces)
    assert [a.shape for a in faces] == [(n, 4), (n,), (n, 5, 2)]
    assert all(a.dtype == np.float32 for a in faces)
    assert np.all(np.diff(faces.scores) <= 0)


def test_a_non_uint8_image_is_refused(detector):  # pylint: disable=redefined-outer-name
  with pytest.raises(ValueError, match=r'Image 1 is float32 \(8, 8, 3\); expected uint8'):
    detector.detect([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)])
