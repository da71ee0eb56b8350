"""The Flax models: Keras-compatible VGG16 names and shapes, heads, the joined classifier."""
import jax
import jax.numpy as jnp
import pytest

from configs import tiny
from gender_jax.models import face_resnet
from gender_jax.models import networks


def shapes(tree):
  return jax.tree.map(jnp.shape, tree)


def test_vgg16_base_has_keras_layer_names_and_shapes():
  variables = jax.eval_shape(networks.VGG16Base().init, jax.random.PRNGKey(0),
                             jnp.zeros((1, 224, 224, 3)))
  params = variables['params']
  assert sorted(params) == sorted(networks.vgg16_layer_names())
  assert shapes(params['block1_conv1']) == {'kernel': (3, 3, 3, 64), 'bias': (64,)}
  assert shapes(params['block5_conv3']) == {'kernel': (3, 3, 512, 512), 'bias': (512,)}
  assert sum(x.size for x in jax.tree.leaves(params)) == 14_714_688  # Keras VGG16 notop.


@pytest.mark.parametrize('size,out', [(224, 7), (32, 1), (112, 3)])
def test_vgg16_base_output_size(size, out):
  y = jax.eval_shape(lambda: networks.VGG16Base().init_with_output(
      jax.random.PRNGKey(0), jnp.zeros((2, size, size, 3)))[0])
  assert y.shape == (2, out, out, 512)


def test_vgg16_base_rejects_inputs_under_32px():
  with pytest.raises(ValueError, match='at least 32x32'):
    networks.VGG16Base().init(jax.random.PRNGKey(0), jnp.zeros((1, 31, 31, 3)))


def test_vgg16_base_computes_in_bfloat16_when_asked():
  y, _ = networks.VGG16Base(dtype=jnp.bfloat16).init_with_output(
      jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  assert y.dtype == jnp.bfloat16


@pytest.mark.parametrize('model', ['custom', 'vgg16'])
def test_classifier_params_are_base_and_head_and_output_one_logit(model):
  config = tiny.get_config(model)
  classifier = networks.create_model(config, 'caffe_imagenet')
  images = jnp.zeros((3, 32, 32, 3), jnp.uint8)
  logits, variables = classifier.init_with_output(jax.random.PRNGKey(0), images)
  assert set(variables['params']) == {'base', 'head'}
  assert logits.shape == (3,)


def test_dropout_only_in_training():
  head = networks.DenseHead(hidden=(16,), dropout_rate=0.5)
  x = jnp.ones((4, 2, 2, 8))
  params = head.init(jax.random.PRNGKey(0), x)
  assert (head.apply(params, x) == head.apply(params, x)).all()
  a = head.apply(params, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
  b = head.apply(params, x, train=True, rngs={'dropout': jax.random.PRNGKey(2)})
  assert not (a == b).all()


@pytest.mark.parametrize('rate', [0.0, 0.5])
def test_input_dropout_drops_the_pooled_features_in_training(rate):
  head = networks.DenseHead(hidden=(), input_dropout_rate=rate)  # Features -> logit directly.
  x = jnp.ones((4, 2, 2, 8))
  params = head.init(jax.random.PRNGKey(0), x)
  trained = head.apply(params, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
  assert (trained == head.apply(params, x)).all() == (rate == 0.0)


def test_pretrained_model_needs_its_preprocessing():
  with pytest.raises(ValueError, match='preprocessing'):
    networks.create_model(tiny.get_config('vggface'))


@pytest.mark.parametrize('norm,has_norm', [('none', False), ('group', True), ('batch', True)])
def test_custom_base_norm_is_a_choice(norm, has_norm):
  base = networks.CustomBase(channels=(8, 16), convs_per_block=2, norm=norm)
  variables = base.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  params = variables['params']
  assert {'block1_conv1', 'block1_conv2', 'block2_conv2'} <= set(params)
  assert ('block1_norm1' in params) == has_norm
  assert ('batch_stats' in variables) == (norm == 'batch')
  assert ('bias' in params['block1_conv1']) == (norm != 'batch')  # BatchNorm cancels a bias.


def test_batch_norm_uses_batch_statistics_in_training_and_running_ones_in_evaluation():
  base = networks.CustomBase(channels=(8,), norm='batch')
  x = jax.random.uniform(jax.random.PRNGKey(0), (8, 8, 8, 3))
  variables = base.init(jax.random.PRNGKey(1), x)
  # Evaluation: each image's output does not depend on the rest of its batch.
  assert jnp.allclose(base.apply(variables, x)[:2], base.apply(variables, x[:2]))
  trained, updates = base.apply(variables, x, train=True, mutable=['batch_stats'])
  assert not jnp.allclose(trained[:2], base.apply(variables, x[:2], train=True,
                                                  mutable=['batch_stats'])[0])
  moved = jax.tree.map(lambda a, b: not jnp.allclose(a, b), variables['batch_stats'],
                       updates['batch_stats'])
  assert all(jax.tree.leaves(moved))


@pytest.mark.parametrize('shape', [(2, 8, 8, 3), (1, 7, 9, 2)])
def test_max_pool_2x2_equals_flax_max_pool_valid(shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  expected = networks.nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
  assert (networks.max_pool_2x2(x) == expected).all()


def test_custom_base_with_group_norm_has_finite_jitted_gradients():
  # A reduce-max pool gave NaN here: XLA recomputed the fused GroupNorm in the backward pass
  # with different rounding, so no window element equalled the max (a 0/0 in its gradient).
  base = networks.CustomBase(channels=(32, 64, 128), norm='group')
  x = jax.random.uniform(jax.random.PRNGKey(0), (16, 40, 40, 3))
  params = base.init(jax.random.PRNGKey(1), x)['params']
  grads = jax.jit(jax.grad(lambda p: base.apply({'params': p}, x).sum()))(params)
  assert all(jnp.isfinite(g).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize('features,width', [('descriptor', 128), ('pooled', 256)])
def test_face_resnet_model_encodes_face_apis_descriptor_or_pooled_features_as_a_1x1_map(
    features, width):
  config = tiny.get_config('face_resnet')
  config.face_resnet_features = features
  classifier = networks.create_model(config, 'face_api')
  images = jax.random.randint(jax.random.PRNGKey(0), (2, 72, 72, 3), 0, 256).astype(jnp.uint8)
  variables = classifier.init(jax.random.PRNGKey(1), images)
  base = variables['params']['base']
  got = classifier.apply(variables, images, method='encode')
  net = face_resnet.FaceResNet()  # face-api's network, normalising its own input.
  expected = net.apply({'params': base}, images,
                       method=None if features == 'descriptor' else 'encode')
  assert got.shape == (2, 1, 1, width)
  assert jnp.allclose(got[:, 0, 0], expected, atol=1e-5, rtol=1e-5)
  assert classifier.apply(variables, images).shape == (2,)


def test_face_resnet_base_params_are_the_converted_tree_whatever_the_features():
  for features in networks.FACE_RESNET_FEATURES:
    config = tiny.get_config('face_resnet')
    config.face_resnet_features = features
    variables = jax.eval_shape(networks.create_model(config, 'face_api').init,
                               jax.random.PRNGKey(0), jnp.zeros((1, 72, 72, 3), jnp.uint8))
    assert shapes(variables['params']['base']) == shapes(face_resnet.param_shapes())


def test_face_resnet_base_rejects_inputs_its_unpadded_layers_leave_nothing_of():
  with pytest.raises(ValueError, match='at least 71 px'):
    networks.FaceResNetBase().init(jax.random.PRNGKey(0), jnp.zeros((1, 70, 70, 3)))
