"""Flax models: a convolutional base under a dense head, params {'base': ..., 'head': ...}."""
from typing import Any, Callable, NamedTuple, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from gender_jax.models import face_resnet
from gender_jax.models import preprocessing
from gender_jax.models import winograd as winograd_conv

# Keras VGG16 (include_top=False): output channels of each convolution, block by block.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def max_pool_2x2(x):
  """2x2 max-pool with stride 2 and 'VALID' padding, as Keras' MaxPooling2D().

  A reshape and two pairwise maxima rather than nn.max_pool: the same forward values, but its
  gradient avoids XLA:CPU's slow select-and-scatter (training the custom CNN on CPU: 1.4x
  faster). Not a reduce-max either: its gradient divides by the count of window elements equal
  to the max, and when XLA recomputes a fused producer (GroupNorm) differently in the forward
  and backward passes, that count is 0 and the gradient NaN. Pairwise maxima compare their two
  inputs directly and never divide.
  """
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
  rows = jnp.maximum(x[:, :, 0], x[:, :, 1])
  return jnp.maximum(rows[:, :, :, 0], rows[:, :, :, 1])


def vgg16_layer_names():
  """Names of the 13 convolutions, `block{b}_conv{i}` as in keras.applications.VGG16."""
  return [f'block{b}_conv{i}' for b, convs in enumerate(VGG16_BLOCKS, 1)
          for i in range(1, len(convs) + 1)]


class VGG16Base(nn.Module):
  """The convolutional part of Keras VGG16: 13 3x3 'same' convs + ReLU, 5 2x2/2 max-pools.

  Parameter names and shapes match Keras, so converted h5 weights load as they are. Any input of
  32 px or more works; a 224 px input gives 7x7x512 features.

  `winograd`: compute the layers where it pays off on this machine by Winograd's F(2x2, 3x3)
  (gender_jax.models.winograd, which times them once; the same function up to float rounding). None:
  on CPU in float32, where XLA has no such algorithm of its own (VGG16 at 224 px 1.13-1.29x
  faster on AMD EPYCs, 1.09-1.14x on an Intel Xeon, never slower); GPU libraries choose their own.
  """
  dtype: Any = jnp.float32
  winograd: bool | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):  # pylint: disable=unused-argument
    if min(x.shape[-3:-1]) < 32:
      raise ValueError(f'VGG16Base needs inputs of at least 32x32 px, got {x.shape[-3:-1]}.')
    winograd = self.winograd
    if winograd is None:
      winograd = jax.default_backend() == 'cpu' and jnp.dtype(self.dtype) == jnp.float32
    for b, convs in enumerate(VGG16_BLOCKS, 1):
      for i, features in enumerate(convs, 1):
        fast = winograd and winograd_conv.pays_off(*x.shape[-3:], features)
        x = nn.Conv(features, (3, 3), padding='SAME', dtype=self.dtype,
                    conv_general_dilated=winograd_conv.conv3x3 if fast else None,
                    name=f'block{b}_conv{i}')(x)
        x = nn.relu(x)
      x = max_pool_2x2(x)
    return x


class CustomBase(nn.Module):
  """A small CNN trained from scratch: the study's "untrained" model.

  Design: plain VGG-style blocks (3x3 convs + ReLU, then a 2x2 max-pool) whose width doubles as
  the resolution halves, so every block costs about the same. Optional normalisation after each
  convolution: BatchNorm (`norm='batch'`; running statistics in the 'batch_stats' collection,
  used at evaluation) or GroupNorm (`norm='group'`; no statistics, train and eval alike). Four
  blocks at 80 px leave a 5x5 map whose receptive field covers the whole face.
  """
  channels: Sequence[int] = (32, 64, 128, 256)
  convs_per_block: int = 1
  norm: str = 'none'  # 'none', 'batch' or 'group'.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for b, features in enumerate(self.channels, 1):
      for i in range(1, self.convs_per_block + 1):
        # No bias before BatchNorm: its mean subtraction cancels it, the gradient is rounding
        # noise and Adam would scale that noise up to full-size steps.
        x = nn.Conv(features, (3, 3), padding='SAME', use_bias=self.norm != 'batch',
                    dtype=self.dtype, name=f'block{b}_conv{i}')(x)
        if self.norm == 'batch':
          # Momentum 0.9, not flax's 0.99: a 5000-image epoch is only ~80 steps.
          x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                           name=f'block{b}_norm{i}')(x)
        elif self.norm == 'group':
          x = nn.GroupNorm(num_groups=min(32, features // 4), dtype=self.dtype,
                           name=f'block{b}_norm{i}')(x)
        elif self.norm != 'none':
          raise ValueError(f"Unknown norm {self.norm!r}; expected 'none', 'batch' or 'group'.")
        x = nn.relu(x)
      x = max_pool_2x2(x)
    return x


FACE_RESNET_FEATURES = ('descriptor', 'pooled')
# The smallest input face_resnet's unpadded convolutions and pools leave a pixel of: its six
# halvings alone would allow 64 px, where the mean is then over nothing.
FACE_RESNET_MIN_SIZE = 71


class FaceResNetBase(face_resnet.FaceResNet):
  """dlib's face-recognition ResNet (gender_jax.models.face_resnet) as a base: preprocessed
  images -> its 128-d descriptor (`features='descriptor'`) or the 256-d features pooled before
  it ('pooled'), as a 1x1 map: the (N, h, w, c) of every base, which the head's pooling and the
  feature cache's mirrored rows take as they are. Params are face_resnet's, names and all."""
  normalize_input: bool = False  # The Classifier applies the 'face_api' preprocessing.
  features: str = 'descriptor'

  def __call__(self, x, train: bool = False):  # pylint: disable=unused-argument
    if min(x.shape[-3:-1]) < FACE_RESNET_MIN_SIZE:
      raise ValueError(f'FaceResNetBase needs inputs of at least {FACE_RESNET_MIN_SIZE} px, got '
                       f'{x.shape[-3:-1]}.')
    if self.features not in FACE_RESNET_FEATURES:
      raise ValueError(f'Unknown features {self.features!r}; expected one of '
                       f'{FACE_RESNET_FEATURES}.')
    x = super().__call__(x) if self.features == 'descriptor' else self.encode(x)
    return x[:, None, None, :]


class DenseHead(nn.Module):
  """Features -> flatten (or global average pool) -> [Dropout] -> Dense+ReLU -> Dropout -> logit."""
  hidden: Sequence[int] = (256,)
  dropout_rate: float = 0.5
  input_dropout_rate: float = 0.0  # On the pooled features: they feed the largest Dense.
  pooling: str = 'flatten'  # 'flatten' keeps spatial layout (the study); 'gap' averages it away.

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(jnp.float32)
    if self.pooling == 'gap':
      x = x.mean(axis=(-3, -2))
    elif self.pooling == 'flatten':
      x = x.reshape(x.shape[0], -1)
    else:
      raise ValueError(f"Unknown pooling {self.pooling!r}; expected 'flatten' or 'gap'.")
    x = nn.Dropout(self.input_dropout_rate, deterministic=not train)(x)
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, name=f'dense{i}')(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(1, name='logit')(x)[:, 0]


class Classifier(nn.Module):
  """Preprocessing, base and head joined: uint8 RGB images -> male logit.

  `encode` (preprocess + base) and `classify` (head) are separate methods so a frozen base can
  run once to cache features and the head can train on them alone.
  """
  base: nn.Module
  head: nn.Module
  preprocessing: str = 'unit'

  def encode(self, images, train: bool = False):
    return self.base(preprocessing.preprocess(images, self.preprocessing), train=train)

  def classify(self, features, train: bool = False):
    return self.head(features, train=train)

  def __call__(self, images, train: bool = False):
    return self.classify(self.encode(images, train=train), train=train)


class ModelInfo(NamedTuple):
  """What the rest of gender_jax needs to know of a model, by its config.model name."""
  weights_source: str | None  # The converted weights its base loads; None: trained from scratch.
  blocks: Callable[[Any], int]  # How many times its base halves the image, from the config.
  # What config.finetune_blocks may name: the base's layer names up to their first '_'.
  block_names: tuple = ()
  min_size: int = 0  # Where unpadded layers need more than the halvings' 2 ** blocks px.

  @property
  def pretrained(self):
    return self.weights_source is not None

  def min_image_size(self, config):
    # At least one pixel left after the last pooling.
    return max(2 ** self.blocks(config), self.min_size)


VGG16_BLOCK_NAMES = tuple(f'block{b}' for b in range(1, len(VGG16_BLOCKS) + 1))
REGISTRY = {
    'custom': ModelInfo(None, lambda config: len(config.custom_channels)),
    'vgg16': ModelInfo('imagenet', lambda config: len(VGG16_BLOCKS), VGG16_BLOCK_NAMES),
    'vggface': ModelInfo('vggface', lambda config: len(VGG16_BLOCKS), VGG16_BLOCK_NAMES),
    # A strided 7x7 convolution, a max-pool and four strided residual blocks.
    'face_resnet': ModelInfo('face_resnet', lambda config: 6, face_resnet.BLOCK_NAMES,
                             FACE_RESNET_MIN_SIZE),
}
NORMS = ('none', 'batch', 'group')
POOLINGS = ('flatten', 'gap')


def create_model(config, preprocessing_name=None):
  """Builds the classifier a config asks for.

  `preprocessing_name` comes from the converted weights' metadata for pretrained bases; the
  custom base always uses 'unit'.
  """
  dtype = jnp.dtype(config.compute_dtype)
  if config.model == 'custom':
    base = CustomBase(channels=tuple(config.custom_channels),
                      convs_per_block=config.custom_convs_per_block, norm=config.custom_norm,
                      dtype=dtype)
    preprocessing_name = 'unit'
  elif config.model == 'face_resnet':
    base = FaceResNetBase(features=config.face_resnet_features, dtype=dtype)
  elif REGISTRY[config.model].weights_source:
    base = VGG16Base(dtype=dtype)
  if preprocessing_name is None:
    raise ValueError('A pretrained base needs the preprocessing named in its weights metadata.')
  head = DenseHead(hidden=tuple(config.head_hidden), dropout_rate=config.dropout_rate,
                   input_dropout_rate=config.head_input_dropout,
                   pooling=config.head_pooling)
  return Classifier(base=base, head=head, preprocessing=preprocessing_name)


def encode_settings(config):
  """The config fields besides the base's variables, dtype and preprocessing that change what
  create_model's `encode` gives: part of the feature cache's key."""
  if config.model == 'face_resnet':
    return {'face_resnet_features': config.face_resnet_features}
  return {}


def initial_variables(model, config, rng, base_params=None):
  """Initialises the model's variables: {'params': {'base', 'head'}} (plus 'batch_stats' for
  a BatchNorm base), with the converted base params where given.

  With a converted base only the head is initialised (the same values a full init gives, since
  flax derives each module's rng from its path): compiling VGG16's init would be wasted.
  """
  dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.uint8)
  if base_params is None:
    return flax.core.unfreeze(jax.jit(model.init)(rng, dummy))
  expected = jax.eval_shape(model.init, rng, dummy)['params']
  got = jax.tree.map(jnp.shape, base_params)
  if jax.tree.map(jnp.shape, expected['base']) != got:
    raise ValueError(f'Converted base weights do not fit the model: {got}.')
  features = jax.eval_shape(lambda p: model.apply({'params': p}, dummy, method='encode'),
                            expected)
  head = model.init(rng, jnp.zeros(features.shape, features.dtype), method='classify')
  return {'params': {'base': jax.tree.map(jnp.asarray, base_params),
                     'head': flax.core.unfreeze(head['params']['head'])}}
