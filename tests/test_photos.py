"""Faces in real photos: a model trained on aligned CelebA faces, used through predict.

configs/custom.py's face pipeline (MTCNN, its template and zoom) with a quicker recipe (fewer
images, 48 px, flips only, 8 epochs) is trained on the real faces; the tests skip where the
faces or facenet-pytorch's weights are missing.
"""
import numpy as np
from PIL import Image
import pytest

from configs import custom
from gender_jax.data import protocol
from gender_jax.faces import inputs
from gender_jax import LABELS
from gender_jax import predict
from gender_jax.training import train
from gender_jax.training import trained_run


@pytest.fixture(scope='module')
def face_run(tmp_path_factory, celeba_gender_dir, mtcnn_weights):
  workdir = tmp_path_factory.mktemp('face_run')
  config = custom.get_config()
  config.update(dict(data_dir=str(celeba_gender_dir),
                     tfds_dir=str(tmp_path_factory.mktemp('tfds')),
                     face_detector_weights=str(mtcnn_weights), num_train=3000, num_valid=200,
                     num_test=200, num_epochs=8, image_size=48, augment_scale=0.0,
                     augment_aspect=0.0, augment_rotate=0.0, augment_brightness=0.0,
                     augment_contrast=0.0, augment_saturation=0.0,
                     augment_frame=(0.0, 0.0, 0.0, 0.0)))
  assert config.face_align == 'mtcnn'
  results = train.train_and_evaluate(config, str(workdir))
  trained = trained_run.load_trained(str(workdir))
  detector = protocol.face_finder(inputs.FaceInput.from_config(trained.config))
  return trained, detector, results


def test_small_aligned_model_learns(face_run):
  _, _, results = face_run
  assert results['metrics']['accuracy'] >= 0.9


def test_astronaut_is_found_and_female(face_run, tmp_path):
  skimage_data = pytest.importorskip('skimage.data')
  trained, detector, _ = face_run
  path = tmp_path / 'astronaut.png'
  Image.fromarray(skimage_data.astronaut()).save(path)
  predictions, errors = predict.predict_files(trained, [str(path)], detector)
  assert not errors and predictions
  subject = max(predictions, key=lambda p: np.prod(p.box[2:] - p.box[:2]))
  assert predict.label_of(subject.p_male) == 'female'


def _group_picture(celeba_gender_dir, count=10, seed=0):
  """CelebA test faces pasted at several sizes and small rotations on a scikit-image photo.

  Returns the picture, the pasted faces' centres and their labels.
  """
  skimage_data = pytest.importorskip('skimage.data')
  rng = np.random.default_rng(seed)
  files = sorted((celeba_gender_dir / 'test').glob('*/*.jpg'))
  chosen = [files[i] for i in rng.choice(len(files), count, replace=False)]
  background = Image.fromarray(skimage_data.coffee()).resize((1250, 600))
  centres, labels = [], []
  for k, file in enumerate(chosen):
    face = Image.open(file).convert('RGB')
    width = int(rng.integers(80, 125))
    face = face.resize((width, round(width * face.height / face.width)))
    face = face.rotate(float(rng.uniform(-12, 12)), Image.Resampling.BILINEAR, expand=True,
                       fillcolor=(128, 128, 128))
    cx, cy = 125 + 250 * (k % 5), 150 + 300 * (k // 5)
    background.paste(face, (cx - face.width // 2, cy - face.height // 2))
    centres.append((cx, cy))
    labels.append(LABELS.index(file.parent.name))
  return background, np.array(centres), labels


def test_group_picture_every_face_found_and_labelled(face_run, celeba_gender_dir, tmp_path):
  trained, detector, _ = face_run
  picture, centres, labels = _group_picture(celeba_gender_dir)
  path = tmp_path / 'group.png'
  picture.save(path)
  predictions, errors = predict.predict_files(trained, [str(path)], detector)
  assert not errors
  found_centres = np.array([(p.box[:2] + p.box[2:]) / 2 for p in predictions])
  right = 0
  for centre, label in zip(centres, labels):
    nearest = int(np.argmin(np.linalg.norm(found_centres - centre, axis=1)))
    assert np.linalg.norm(found_centres[nearest] - centre) < 40, f'no face found at {centre}'
    right += int(predictions[nearest].p_male >= 0.5) == label
  assert right >= 0.9 * len(labels)
