"""Winograd F(2x2, 3x3) convolutions: the same function as XLA's direct ones, used where they pay."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gender_jax import models, winograd


def direct_conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      precision='highest')


@pytest.mark.parametrize('height,width', [(8, 8), (9, 12), (7, 5), (1, 2)])
def test_conv3x3_equals_the_direct_same_convolution(height, width):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, height, width, 5)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 5, 7)), jnp.float32)
  got = winograd.conv3x3(x, kernel, (1, 1), 'SAME')
  want = direct_conv(x, kernel)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(jnp.abs(want).max()))


def test_conv3x3_has_the_direct_convolutions_gradients():
  """A base that is trained rather than frozen differentiates through the Winograd layers."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 6, 10, 3)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
  loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k)))
  got = jax.grad(loss(lambda x, k: winograd.conv3x3(x, k, (1, 1), 'SAME')), (0, 1))(x, kernel)
  want = jax.grad(loss(direct_conv), (0, 1))(x, kernel)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * float(jnp.abs(w).max()))


@pytest.mark.parametrize('strides,padding', [((2, 2), 'SAME'), ((1, 1), 'VALID')])
def test_conv3x3_refuses_what_it_does_not_compute(strides, padding):
  x, kernel = jnp.zeros((1, 8, 8, 2)), jnp.zeros((3, 3, 2, 4))
  with pytest.raises(ValueError, match='stride 1, SAME padding'):
    winograd.conv3x3(x, kernel, strides, padding)


def _direct_convolutions(base, size):
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  params = jax.eval_shape(base.init, jax.random.key(0), images)
  jaxpr = jax.make_jaxpr(base.apply)(params, images)
  return str(jaxpr).count('conv_general_dilated')


def test_vgg16_base_takes_winograd_on_cpu_for_the_wide_layers_on_large_maps():
  assert _direct_convolutions(models.VGG16Base(), 224) == 5  # Blocks 2-4 (112-28 px) by Winograd.
  assert _direct_convolutions(models.VGG16Base(), 112) == 8  # Blocks 2-3 (56-28 px).
  assert _direct_convolutions(models.VGG16Base(winograd=False), 224) == 13
  assert _direct_convolutions(models.VGG16Base(dtype=jnp.bfloat16), 224) == 13  # float32 only.


def test_vgg16_base_gives_the_same_features_with_and_without_winograd():
  images = jnp.asarray(np.random.default_rng(1).uniform(-120, 130, (2, 112, 112, 3)), jnp.float32)
  params = models.VGG16Base().init(jax.random.key(0), images[:1])
  fast = jax.jit(models.VGG16Base(winograd=True).apply)(params, images)
  direct = jax.jit(models.VGG16Base(winograd=False).apply)(params, images)
  assert float(jnp.abs(fast - direct).max()) < 1e-5 * float(jnp.abs(direct).max())
