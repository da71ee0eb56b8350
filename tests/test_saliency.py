"""Grad-CAM maps and their overlay."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from gender_jax.analysis import saliency
from gender_jax.models import networks

SIZE = 32


class ChannelReader(nn.Module):
  """A hand-set model: features are the image pooled 4x4, the logit a weighted sum of channels."""
  weights: tuple  # One per colour channel.
  pooled: bool = False  # Encode to (N, C) instead of a feature map.

  def encode(self, images, train=False):  # pylint: disable=unused-argument
    features = nn.avg_pool(images.astype(jnp.float32) / 255.0, (4, 4), strides=(4, 4))
    return features.mean(axis=(1, 2)) if self.pooled else features

  def classify(self, features, train=False):  # pylint: disable=unused-argument
    return features.sum(axis=(1, 2)) @ jnp.asarray(self.weights)

  def __call__(self, images, train=False):
    return self.classify(self.encode(images))


def two_squares():
  """One image, black but for a red square top left and a green one bottom right."""
  image = np.zeros((1, SIZE, SIZE, 3), np.uint8)
  image[0, 4:12, 4:12, 0] = 255
  image[0, 20:28, 20:28, 1] = 255
  return image


def quadrant_mass(cam):
  """The share of a map's total in each quadrant: top left, top right, bottom left, bottom right."""
  h = SIZE // 2
  mass = np.array([cam[:h, :h].sum(), cam[:h, h:].sum(), cam[h:, :h].sum(), cam[h:, h:].sum()])
  return mass / mass.sum()


@pytest.fixture(scope='module')
def tiny_model():
  """The tiny custom classifier (BatchNorm, so its variables hold batch_stats) and its variables."""
  model = networks.create_model(tiny.get_config('custom'))
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3), jnp.uint8))
  assert 'batch_stats' in variables
  return model, variables


@pytest.fixture(scope='module')
def images():
  return np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3)).astype(np.uint8)


def test_maps_have_the_image_size_lie_in_0_1_and_peak_at_1(tiny_model, images):
  model, variables = tiny_model
  cams = saliency.grad_cam(model, variables, images)
  assert cams.shape == (5, SIZE, SIZE) and cams.dtype == np.float32
  assert (cams >= 0).all() and (cams <= 1).all()
  nonzero = cams.max(axis=(1, 2)) > 0
  assert nonzero.any()
  np.testing.assert_array_equal(cams[nonzero].max(axis=(1, 2)), 1.0)
  # Batches of 2 (the last one short) give each image the same map as one batch of 5.
  np.testing.assert_allclose(saliency.grad_cam(model, variables, images, batch_size=2), cams,
                             atol=1e-6)


def test_no_images_give_no_maps(tiny_model):
  model, variables = tiny_model
  cams = saliency.grad_cam(model, variables, np.zeros((0, SIZE, SIZE, 3), np.uint8))
  assert cams.shape == (0, SIZE, SIZE) and cams.dtype == np.float32


@pytest.mark.parametrize('sign', [1.0, -1.0])
@pytest.mark.parametrize('weights,channel,quadrant', [
    ((1.0, 0.0, 0.0), 0, 0), ((0.0, 1.0, 0.0), 1, 3),
    ((1.0, -0.5, 0.0), 0, 0), ((-0.5, 1.0, 0.0), 1, 3)])
def test_map_lies_on_the_evidence_for_the_prediction(weights, channel, quadrant, sign):
  # Grad-CAM's channel weights are spatial means, so the map localises through the channels:
  # only the square of the colour that speaks for the prediction may light up, not one the head
  # ignores nor one that speaks against it (the ReLU). sign=-1 negates the logit: the prediction
  # is female and the map, made from -logit, the same.
  model = ChannelReader(weights=tuple(sign * w for w in weights))
  image = two_squares()
  assert np.sign(model.apply({}, image)[0]) == sign
  cam = saliency.grad_cam(model, {}, image)[0]
  assert quadrant_mass(cam)[quadrant] > 0.99
  assert cam.max() == 1.0
  # The map is that colour's feature map (the image pooled 4x4), upsampled and scaled.
  pooled = image[0, :, :, channel].reshape(8, 4, 8, 4).mean(axis=(1, 3)) / 255.0
  expected = np.asarray(jax.image.resize(pooled, (SIZE, SIZE), 'bilinear'))
  np.testing.assert_allclose(cam, expected / expected.max(), atol=1e-6)


def test_map_is_for_the_predicted_class(tiny_model, images):
  # Negating the last Dense negates the logit and flips every prediction; the evidence for the
  # predicted class, and so its map, is the same.
  model, variables = tiny_model
  flipped = jax.tree.map(lambda x: x, variables)
  flipped['params']['head']['logit'] = jax.tree.map(
      jnp.negative, variables['params']['head']['logit'])
  logits = np.asarray(model.apply(variables, images))
  np.testing.assert_allclose(np.asarray(model.apply(flipped, images)), -logits, atol=1e-6)
  cams = saliency.grad_cam(model, variables, images)
  assert cams.max() > 0
  np.testing.assert_allclose(saliency.grad_cam(model, flipped, images), cams, atol=1e-5)


def test_pooled_features_are_rejected():
  with pytest.raises(ValueError, match='spatial feature map'):
    saliency.grad_cam(ChannelReader(weights=(1.0, 0.0, 0.0), pooled=True), {},
                       two_squares())


def test_overlay_blends_the_image_with_the_maps_colours():
  image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
  cam = np.zeros((SIZE, SIZE), np.float32)
  cam[:, :SIZE // 2] = 1.0
  out = saliency.overlay(image, cam)
  assert out.dtype == np.uint8 and out.shape == image.shape
  np.testing.assert_array_equal(saliency.overlay(image, cam, alpha=0.0), image)
  heat = saliency.overlay(image, cam, alpha=1.0).astype(int)
  # 'jet': 1 is dark red, 0 dark blue.
  assert (heat[:, :SIZE // 2, 0] > heat[:, :SIZE // 2, 2]).all()
  assert (heat[:, SIZE // 2:, 2] > heat[:, SIZE // 2:, 0]).all()
  with pytest.raises(ValueError, match='does not match'):
    saliency.overlay(image, cam[:-1])
