"""Face alignment and training-image jitter: transforms, templates, warps."""
import jax
import numpy as np
from PIL import Image
import pytest

import augment_reference

from gender_jax.data import augment
from gender_jax.data import batching
from gender_jax.data import input_cache
from gender_jax.data import protocol
from gender_jax.faces import align
from gender_jax.faces import detect
from gender_jax.faces import inputs

# Typical landmarks of a CelebA crop, 89x109 (eyes, nose, mouth corners).
CELEBA_POINTS = np.array([[31.0, 53.0], [57.0, 53.0], [44.0, 66.0], [33.0, 79.0], [55.0, 79.0]])


def _rotation(degrees):
  a = np.deg2rad(degrees)
  return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def test_similarity_transform_recovers_rotation_scale_and_shift():
  linear = 1.7 * _rotation(25)
  dst = CELEBA_POINTS @ linear.T + [4.0, -9.0]
  matrix = align.similarity_transform(CELEBA_POINTS, dst)
  np.testing.assert_allclose(matrix, np.hstack([linear, [[4.0], [-9.0]]]), atol=1e-9)


def test_similarity_transform_never_reflects():
  mirrored = CELEBA_POINTS * [-1.0, 1.0]
  matrix = align.similarity_transform(CELEBA_POINTS, mirrored)
  assert np.linalg.det(matrix[:, :2]) > 0


def _dots(pixels, shape, radius=2):
  """A black image with a white square dot centred on each (x, y) pixel."""
  image = np.zeros((*shape, 3), np.uint8)
  for x, y in pixels.astype(int):
    image[y - radius:y + radius + 1, x - radius:x + radius + 1] = 255
  return image


def _centres(image, near, radius=6):
  """The centre of brightness around each of `near` (pixel coordinates, centres at +0.5)."""
  grey = image.astype(np.float64).sum(-1)
  found = []
  for x, y in np.round(near).astype(int):
    y0, x0 = max(0, y - radius), max(0, x - radius)
    patch = grey[y0:y + radius + 1, x0:x + radius + 1]
    ys, xs = np.mgrid[:patch.shape[0], :patch.shape[1]]
    found.append([x0 + (xs * patch).sum() / patch.sum() + 0.5,
                  y0 + (ys * patch).sum() / patch.sum() + 0.5])
  return np.array(found)


@pytest.mark.parametrize('degrees,scale', [(0, 1.0), (20, 1.0), (-15, 2.5), (10, 0.5)])
def test_align_face_puts_the_landmarks_on_the_template(degrees, scale):
  # A centre crop keeps the face's proportions, so a similarity can meet the template exactly.
  template = align.derive_template(CELEBA_POINTS[None], [(89, 109)], resize='center_crop')
  # The same face seen rotated, scaled and moved in a larger photo.
  linear = scale * _rotation(degrees)
  pixels = np.round((CELEBA_POINTS - 50) @ linear.T + [120, 100])
  photo = _dots(pixels, (220, 260), radius=max(1, round(2 * scale)))
  aligned = align.align_face(photo, pixels + 0.5, template, 80)  # Pixel centres are at +0.5.
  assert aligned.shape == (80, 80, 3) and aligned.dtype == np.uint8
  np.testing.assert_allclose(_centres(aligned, template * 80), template * 80, atol=1.0)


def test_warp_repeats_edge_pixels_outside_the_image():
  image = np.zeros((10, 10, 3), np.uint8)
  image[:, -1] = 200  # A bright right edge.
  shifted = align.warp_affine(image, np.array([[1.0, 0, -5], [0, 1.0, 0]]), 10)
  assert (shifted[:, 4:] == 200).all()  # Beyond the old right edge: the edge repeated.
  assert (shifted[:, :3] == 0).all()


def test_identity_warp_keeps_the_image():
  image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  np.testing.assert_array_equal(align.warp_affine(image, np.eye(2, 3), 16), image)


def test_template_of_aligned_crops_matches_what_resize_shows():
  template = align.derive_template([CELEBA_POINTS] * 3, [(89, 109)] * 3, resize='stretch')
  np.testing.assert_allclose(template, CELEBA_POINTS / [89, 109], atol=1e-6)
  cropped = align.derive_template([CELEBA_POINTS], [(89, 109)], resize='center_crop')
  np.testing.assert_allclose(cropped, (CELEBA_POINTS - [0, 10]) / 89, atol=1e-6)


def test_template_zoom_scales_about_the_landmarks_centre():
  plain = align.derive_template([CELEBA_POINTS], [(89, 109)])
  zoomed = align.derive_template([CELEBA_POINTS], [(89, 109)], zoom=1.5)
  np.testing.assert_allclose(zoomed.mean(0), plain.mean(0), atol=1e-6)
  np.testing.assert_allclose(zoomed - zoomed.mean(0), 1.5 * (plain - plain.mean(0)), atol=1e-6)


def test_no_training_face_is_an_error():
  with pytest.raises(ValueError, match='No training face'):
    align.derive_template(np.zeros((0, 5, 2)), np.zeros((0, 2)))


def test_largest_face_is_the_subject():
  found = detect.Faces(boxes=np.array([[0, 0, 10, 10], [5, 5, 40, 50], [0, 0, 20, 20]],
                                           np.float32),
                            scores=np.array([0.99, 0.9, 0.95], np.float32),
                            landmarks=np.zeros((3, 5, 2), np.float32))
  assert align.largest_face(found) == 1
  none = detect.Faces(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, 5, 2)))
  assert align.largest_face(none) is None


# --- Jitter of training images -------------------------------------------------------------------


def _split(n=16, size=12):
  rng = np.random.default_rng(0)
  return batching.Split('train', rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                              np.arange(n, dtype=np.int32) % 2, [f'{i}.jpg' for i in range(n)],
                              '.')


def _batches(split, jitter=augment.Jitter(), **kwargs):
  """The augmented images of an epoch's batches."""
  return [np.asarray(augment.apply(b['image'], b['augment'], jitter))
          for b in augment.train_batches(split, 8, seed=3, epoch=1, flip=True, shift=0.1,
                                         jitter=jitter, **kwargs)]


def _identity_draws(n, **columns):
  """'augment' rows that change nothing but the given columns."""
  row = dict.fromkeys(augment.DRAWS, 0.0) | dict(scale=1.0, aspect=1.0, brightness=1.0,
                                                 contrast=1.0, saturation=1.0) | columns
  return np.tile(np.array([row[k] for k in augment.DRAWS], np.float32), (n, 1))


_ALL_JITTER = augment.Jitter(scale=0.15, aspect=0.05, rotate=15, brightness=0.4, contrast=0.4,
                             saturation=0.8, frame=(0.1, 0.35, 0.1, 0.1))


@pytest.mark.parametrize('jitter', [
    augment.Jitter(), augment.Jitter(frame=_ALL_JITTER.frame),
    augment.Jitter(scale=0.15, aspect=0.05, rotate=15),
    augment.Jitter(brightness=0.4, contrast=0.4, saturation=0.8), _ALL_JITTER])
def test_device_augmentation_matches_the_host_implementation(jitter):
  # The same draws through augment.apply (jitted) and the host code it replaced, image by image.
  split = _split(n=32, size=40)
  batch = next(augment.train_batches(split, 32, seed=0, epoch=1, flip=True, shift=0.1,
                                     jitter=jitter))
  got = np.asarray(jax.jit(augment.apply, static_argnums=2)(batch['image'], batch['augment'],
                                                            jitter)).astype(int)
  want = augment_reference.apply(batch['image'], batch['augment'], jitter).astype(int)
  differ = got != want
  if not jitter.geometric:
    assert not differ.any()  # Integer index arithmetic and float32 colour, as the host's.
  else:  # float32 against Pillow's float64 bilinear weights: a level at rare truncation edges,
    assert differ.mean() < 0.005  # which colour jitter can scale by up to 1.8 x 1.4.
    assert np.abs(got - want).max() <= (3 if jitter.photometric else 1)


def test_no_jitter_leaves_flips_and_shifts_as_they_were():
  split = _split()
  plain = _batches(split)
  off = _batches(split, jitter=augment.Jitter())
  for a, b in zip(plain, off):
    np.testing.assert_array_equal(a, b)


def test_jitter_is_drawn_from_seed_and_epoch():
  split = _split()
  jitter = augment.Jitter(scale=0.2, aspect=0.1, rotate=15, brightness=0.3, contrast=0.3,
                                 saturation=0.3)
  first, again = _batches(split, jitter=jitter), _batches(split, jitter=jitter)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert any((a != b).any() for a, b in zip(first, _batches(split)))


def test_colour_jitter_of_one_is_identity_and_brightness_scales():
  images = _split().images[:]
  colour = augment.Jitter(brightness=0.5, contrast=0.5, saturation=0.5)
  same = augment.apply(images, _identity_draws(len(images)), colour)
  np.testing.assert_array_equal(same, images)
  darker = augment.apply(images, _identity_draws(len(images), brightness=0.5), colour)
  np.testing.assert_allclose(darker, np.rint(images * 0.5), atol=1)


def test_rotating_jitter_turns_the_image_about_its_centre():
  image = np.zeros((1, 21, 21, 3), np.uint8)
  image[0, 10, 15:] = 255  # A bar from the centre to the right edge.
  turned = np.asarray(augment.apply(image, _identity_draws(1, angle=np.pi / 2),
                                    augment.Jitter(rotate=90)))[0]
  assert turned[15:, 10].mean() > 200  # Now from the centre down (y grows downwards).
  assert turned[10, 15:].mean() < 50


# --- The aligned data pipeline, with a stand-in detector ----------------------------------------


class DotDetector:
  """Finds the 'face' of test images: landmarks at fixed fractions of the image; none if dark."""
  id = 'dots'  # As Detector.id: names the landmarks' cache.

  def __init__(self):
    self.calls = 0

  def detect(self, images):
    self.calls += len(images)
    found = []
    for image in images:
      height, width = image.shape[:2]
      if image.mean() < 60:
        found.append(detect.Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                                       np.zeros((0, 5, 2), np.float32)))
        continue
      points = (CELEBA_POINTS / [89, 109] * [width, height]).astype(np.float32)
      found.append(detect.Faces(np.array([[0, 0, width, height]], np.float32),
                                     np.ones(1, np.float32), points[None]))
    return found


def _aligned_config(data_dir, tfds_dir, **overrides):
  from configs import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.update(dict(data_dir=str(data_dir), tfds_dir=str(tfds_dir), num_train=-1, num_valid=-1,
                     num_test=-1, image_size=16, face_align='mtcnn', resize='center_crop'))
  config.update(overrides)
  return config


@pytest.fixture
def dot_detector(monkeypatch):
  detector = DotDetector()
  monkeypatch.setattr(protocol, 'face_finder', lambda face_input: detector)
  return detector


def _dark(folder, rel):
  Image.fromarray(np.full((28, 24, 3), 20, np.uint8)).save(folder / rel)


def test_template_is_derived_from_training_faces_and_recorded(synthetic_faces, tmp_path,
                                                              dot_detector):
  config = _aligned_config(synthetic_faces, tmp_path / 'tfds')
  loaded = protocol.load_splits(config)
  expected = align.derive_template([CELEBA_POINTS / [89, 109] * [24, 28]], [(24, 28)],
                                   'center_crop')
  np.testing.assert_allclose(np.reshape(loaded.face_input.template, (5, 2)), expected, atol=1e-5)
  assert loaded.splits['train'].images.shape[1:] == (16, 16, 3)
  assert config.face_template == ()  # Loading writes nothing into the config.
  assert not loaded.splits['train'].no_face


def test_landmarks_and_aligned_images_are_cached(synthetic_faces, tmp_path, dot_detector,
                                                 monkeypatch):
  config = _aligned_config(synthetic_faces, tmp_path / 'tfds')
  first = protocol.load_splits(config).splits
  calls = dot_detector.calls
  assert calls == sum(len(s) for s in first.values())
  monkeypatch.setattr(input_cache, '_decode_convert', lambda *a, **k: pytest.fail('decoded'))
  second = protocol.load_splits(config).splits
  assert dot_detector.calls == calls
  np.testing.assert_array_equal(first['test'].images, second['test'].images)


class BatchRecordingDetector(DotDetector):
  """Records the images of each detect call, to see how batches are made."""

  def __init__(self):
    super().__init__()
    self.batches = []

  def detect(self, images):
    self.batches.append([image.tobytes() for image in images])
    return super().detect(images)


def test_faces_are_found_each_image_alone_whatever_asks_first(synthetic_faces, tmp_path,
                                                              monkeypatch):
  # Batched detection rounds differently with another batch: each image is found alone.
  detectors = []
  for order, tfds in (([4, 20], 'a'), ([20, 4], 'b')):  # Two protocols, asked in either order.
    detector = BatchRecordingDetector()
    monkeypatch.setattr(protocol, 'face_finder', lambda face_input, d=detector: d)
    for num_train in order:
      protocol.load_splits(
          _aligned_config(synthetic_faces, tmp_path / tfds, num_train=num_train),
          splits=('train',))
    detectors.append(detector)
  a, b = (sorted(map(tuple, d.batches)) for d in detectors)
  assert a == b  # The same batches, whichever protocol came first.
  assert all(len(batch) == 1 for batch in a)


def test_a_folders_faces_are_found_each_image_alone_too(synthetic_faces):
  # As in a dataset and in predict: a photo's landmarks must not depend on the photos beside it.
  detector = BatchRecordingDetector()
  protocol.load_folder(synthetic_faces / 'valid', inputs.FaceInput.from_config(
      _aligned_config(synthetic_faces, '', face_template=tuple(CELEBA_POINTS.ravel() / 100))),
                       detector)
  assert len(detector.batches) == 20 and all(len(batch) == 1 for batch in detector.batches)


def test_caches_of_other_weights_or_an_older_face_finding_are_not_reused(monkeypatch):
  # A change that moves landmarks bumps FACE_FINDING_VERSION: faces found before are found again.
  weights = {'pt_sha256': {'pnet.pt': 'a', 'rnet.pt': 'b', 'onet.pt': 'c'}}
  current = detect.detector_id(weights)
  assert detect.detector_id(dict(weights)) == current
  assert detect.detector_id({'pt_sha256': {**weights['pt_sha256'], 'onet.pt': 'd'}}) != current
  monkeypatch.setattr(detect, 'FACE_FINDING_VERSION', detect.FACE_FINDING_VERSION + 1)
  assert detect.detector_id(weights) != current


def test_another_template_makes_other_images(synthetic_faces, tmp_path, dot_detector):
  config = _aligned_config(synthetic_faces, tmp_path / 'tfds')
  plain = protocol.load_splits(config).splits['train'].images[:]
  zoomed = protocol.load_splits(_aligned_config(synthetic_faces, tmp_path / 'tfds',
                                                      face_zoom=1.5)).splits['train'].images[:]
  assert (plain != zoomed).any()


@pytest.mark.parametrize('how', ['resize', 'drop'])
def test_images_without_a_face_are_listed_and_handled(tmp_path, dot_detector, how):
  import conftest  # pylint: disable=g-import-not-at-top
  folder = conftest.write_synthetic_faces(tmp_path / 'faces')
  _dark(folder, 'test/male/test_male_000.jpg')
  config = _aligned_config(folder, tmp_path / 'tfds', face_missing=how)
  splits = protocol.load_splits(config, workdir=tmp_path / 'work').splits
  test = splits['test']
  assert test.no_face == ['test/male/test_male_000.jpg']
  assert ('test/male/test_male_000.jpg' in test.paths) == (how == 'resize')
  assert len(test) == 20 - (how == 'drop')
  listed = (tmp_path / 'work' / 'protocol' / 'no_face_test.txt').read_text()
  assert listed == 'test/male/test_male_000.jpg\t1\n'


def test_evaluation_without_train_split_needs_the_runs_template(synthetic_faces, tmp_path,
                                                                dot_detector):
  config = _aligned_config(synthetic_faces, tmp_path / 'tfds')
  with pytest.raises(ValueError, match='face_template is empty'):
    protocol.load_splits(config, splits=('test',))


def test_folder_faces_are_aligned_like_the_dataset(synthetic_faces, tmp_path, dot_detector):
  config = _aligned_config(synthetic_faces, tmp_path / 'tfds')
  loaded = protocol.load_splits(config)
  folder = protocol.load_folder(synthetic_faces / 'test', loaded.face_input, dot_detector)
  np.testing.assert_array_equal(folder.images, loaded.splits['test'].images)


def test_predict_and_evaluate_see_faces_as_the_run_was_trained(synthetic_faces, tmp_path,
                                                               dot_detector):
  import csv  # pylint: disable=g-import-not-at-top
  from gender_jax import evaluate, predict
  from gender_jax.training import trained_run
  from gender_jax.training import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  config = _aligned_config(synthetic_faces, tmp_path / 'tfds', num_train=32, num_valid=16,
                           num_test=16, image_size=32)
  results = train.train_and_evaluate(config, str(workdir))
  assert len(results['config']['face_template']) == 10 and config.face_template == ()
  trained = trained_run.load_trained(str(workdir))
  assert tuple(trained.config.face_template) == tuple(results['config']['face_template'])

  with open(workdir / 'predictions_test.csv', newline='') as f:
    expected = {str(synthetic_faces / r['path']): float(r['p_male']) for r in csv.DictReader(f)}
  predictions, errors = predict.predict_files(trained, sorted(expected), dot_detector)
  assert not errors
  assert [p.face for p in predictions] == [0] * len(expected)
  for p in predictions:
    assert p.p_male == pytest.approx(expected[p.path], abs=1e-5), p.path

  _dark(tmp_path, 'dark.png')
  predictions, errors = predict.predict_files(trained, [str(tmp_path / 'dark.png')], dot_detector)
  assert not predictions and errors == [(str(tmp_path / 'dark.png'), predict.NO_FACE)]

  on_test = evaluate.evaluate(str(workdir), split='test')
  assert on_test['metrics']['accuracy'] == pytest.approx(results['metrics']['accuracy'])

  from gender_jax.report import document  # pylint: disable=g-import-not-at-top
  document.write_report([str(workdir)], str(tmp_path / 'report'))
  assert '| mtcnn-aligned, zoom 1.0 |' in (tmp_path / 'report' / 'report.md').read_text()


def test_frame_jitter_repeats_the_pixels_at_each_cut():
  images = _split(n=1, size=20).images[:]
  draws = _identity_draws(1, left=0.1, top=0.25, right=0.0, bottom=0.2)
  framed = np.asarray(augment.apply(images, draws, augment.Jitter(frame=(0.1, 0.3, 0.1, 0.2))))
  framed = framed[0]
  np.testing.assert_array_equal(framed[5:16, 2:], images[0, 5:16, 2:])  # Inside: unchanged.
  assert (framed[:5] == framed[5]).all()  # Top 25% cut: the first kept row repeated.
  assert (framed[16:] == framed[15]).all()  # Bottom 20%.
  assert (framed[:, :2] == framed[:, 2:3]).all()  # Left 10%.


def test_frame_jitter_touches_about_half_the_images():
  factors = augment.Jitter(frame=(0.1, 0.3, 0.1, 0.1)).draw(np.random.default_rng(0), 1000)
  framed = factors[:, 6:].any(axis=1)
  assert 0.45 < framed.mean() < 0.55
  assert (factors[:, 7] <= 0.3).all() and factors[:, 7].max() > 0.25
