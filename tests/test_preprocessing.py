"""Named preprocessing, checked against numbers worked out by hand."""
import jax.numpy as jnp
import numpy as np
import pytest

from gender_jax.models import preprocessing

# One RGB pixel (R, G, B) = (10, 20, 30): the Caffe-style names reorder to BGR (30, 20, 10) and
# subtract their per-channel BGR means.
PIXEL = np.array([[[[10, 20, 30]]]], np.uint8)
EXPECTED = {
    'caffe_imagenet': [30 - 103.939, 20 - 116.779, 10 - 123.68],
    'vggface_v1': [30 - 93.5940, 20 - 104.7624, 10 - 129.1863],
    'unit': [10 / 255, 20 / 255, 30 / 255],
    # face-api's FaceRecognitionNet: RGB kept, its RGB means subtracted, then / 255.
    'face_api': [(10 - 122.782) / 255, (20 - 117.001) / 255, (30 - 104.298) / 255],
}


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_values_by_hand(name):
  out = preprocessing.preprocess(PIXEL, name)
  assert out.dtype == np.float32 and out.shape == PIXEL.shape
  np.testing.assert_allclose(out[0, 0, 0], EXPECTED[name], rtol=1e-6)


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_jax_and_numpy_agree(name):
  np.testing.assert_allclose(preprocessing.preprocess(jnp.asarray(PIXEL), name),
                             preprocessing.preprocess(PIXEL, name), rtol=1e-6)


def test_every_name_is_tested():
  assert set(preprocessing.PREPROCESSINGS) == set(EXPECTED)


def test_unknown_name_fails():
  with pytest.raises(ValueError, match='Unknown preprocessing'):
    preprocessing.preprocess(PIXEL, 'imagenet_torch')

