"""dlib's face-recognition ResNet (29 convolutions; 150x150 RGB -> a 128-d descriptor) as face-api
runs it (its src/faceRecognitionNet), and the converted weights `python -m weights_convert
--source face_resnet` writes. Params carry face-api's tensor names: its
'conv32_1/conv1/conv/filters' is params['conv32_1']['conv1']['conv']['filters'].
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gender_jax.models import preprocessing
from gender_jax.models import weights_folder

CONVERT_COMMAND = 'python -m weights_convert --source face_resnet --download --out {}'
INPUT_SIZE = 150
# face-api's forwardInput: (x - mean) / 255 per RGB channel (the 'face_api' preprocessing).
MEAN_RGB = preprocessing.FACE_API_MEAN_RGB
FEATURES, DESCRIPTOR = 256, 128
# The faces the network was trained on: dlib's chips, get_face_chip_details(shape, 150, 0.25) as
# dlib's dnn_face_recognition_ex.cpp cuts them. As a face_template (gender_jax.faces.align): where
# such a chip puts MTCNN's five landmarks, from dlib's mean face shape (image_transforms/
# interpolation.h) at padding 0.25, (0.25 + p) / 1.5: each eye's centre (the mean of its six
# points), the nose tip (point 30) and the mouth corners (48, 54). Faces are larger and higher
# in it than in a template derived from CelebA's crops (docs/results.md, face_resnet).
CHIP_TEMPLATE = (0.316995, 0.310660, 0.669841, 0.310660, 0.493418, 0.510417,
                 0.336099, 0.686822, 0.650736, 0.686822)
# The residual blocks in forwardInput's order: (name, channels, down). A 'down' block halves the
# height and width and, where the channels grow, pads its shortcut with zero channels.
BLOCKS = (('conv32_1', 32, False), ('conv32_2', 32, False), ('conv32_3', 32, False),
          ('conv64_down', 64, True), ('conv64_1', 64, False), ('conv64_2', 64, False),
          ('conv64_3', 64, False),
          ('conv128_down', 128, True), ('conv128_1', 128, False), ('conv128_2', 128, False),
          ('conv256_down', 256, True), ('conv256_1', 256, False), ('conv256_2', 256, False),
          ('conv256_down_out', 256, True))
# Its parts as config.finetune_blocks names them: each width's layers (a layer's name up to its
# first '_'), then the descriptor's projection.
BLOCK_NAMES = (*dict.fromkeys(name.split('_')[0] for name, _, _ in BLOCKS), 'fc')


def preprocess(images):
  """RGB images (uint8 or float, 0..255, channels last) -> the network's input, as face-api."""
  return preprocessing.preprocess(jnp.asarray(images), 'face_api')


class Conv(nn.Module):
  """tf.conv2d then the bias added, with face-api's names: filters (kh, kw, in, out), bias."""
  features: int
  size: int = 3
  stride: int = 1
  padding: str = 'SAME'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    filters = self.param('filters', nn.initializers.lecun_normal(),
                         (self.size, self.size, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    y = jax.lax.conv_general_dilated(x.astype(self.dtype), filters.astype(self.dtype),
                                     (self.stride, self.stride), self.padding,
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y + bias.astype(self.dtype)


class Scale(nn.Module):
  """face-api's scale layer (dlib's affine layer, batch norm folded): x * weights + biases."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    weights = self.param('weights', nn.initializers.ones, (x.shape[-1],))
    biases = self.param('biases', nn.initializers.zeros, (x.shape[-1],))
    return x * weights.astype(self.dtype) + biases.astype(self.dtype)


class ConvLayer(nn.Module):
  """face-api's convLayer: conv + bias, scale, then ReLU unless `relu` is False."""
  features: int
  size: int = 3
  stride: int = 1
  padding: str = 'SAME'
  relu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = Conv(self.features, self.size, self.stride, self.padding, self.dtype, name='conv')(x)
    x = Scale(self.dtype, name='scale')(x)
    return nn.relu(x) if self.relu else x


class Residual(nn.Module):
  """face-api's residual (`down` False) and residualDown (True) blocks."""
  features: int
  down: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out = ConvLayer(self.features, stride=2 if self.down else 1,
                    padding='VALID' if self.down else 'SAME', dtype=self.dtype, name='conv1')(x)
    out = ConvLayer(self.features, relu=False, dtype=self.dtype, name='conv2')(out)
    if self.down:
      x = nn.avg_pool(x, (2, 2), (2, 2), padding='VALID')
      # On an even size the valid 3x3/2 convolution gives one row and column fewer than the 2x2
      # pool; face-api appends zeros to its output below and to the right.
      out = jnp.pad(out, ((0, 0), (0, x.shape[1] - out.shape[1]),
                          (0, x.shape[2] - out.shape[2]), (0, 0)))
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.features - x.shape[-1])))
    return nn.relu(x + out)


class FaceResNet(nn.Module):
  """face-api's FaceRecognitionNet: `encode` gives the pooled 256-d features, calling it the
  128-d descriptor (computeFaceDescriptor's values; not normalised)."""
  # False where the caller has already applied `preprocess`.
  normalize_input: bool = True
  dtype: Any = jnp.float32

  def setup(self):
    # Attribute names are the params' names (face-api's), hence setattr rather than a list.
    self.conv32_down = ConvLayer(32, size=7, stride=2, padding='VALID', dtype=self.dtype)
    for name, features, down in BLOCKS:
      setattr(self, name, Residual(features, down, self.dtype))
    self.fc = self.param('fc', nn.initializers.lecun_normal(), (FEATURES, DESCRIPTOR))

  def encode(self, images):
    """(B, 150, 150, 3) RGB images (0..255, or preprocessed) -> (B, 256) pooled features."""
    x = preprocess(images) if self.normalize_input else images
    x = self.conv32_down(x)
    x = nn.max_pool(x, (3, 3), (2, 2), padding='VALID')
    for name, _, _ in BLOCKS:
      x = getattr(self, name)(x)
    return jnp.mean(x, axis=(1, 2))

  def __call__(self, images):
    """(B, 150, 150, 3) RGB images -> (B, 128) face descriptors."""
    return self.encode(images) @ self.fc.astype(self.dtype)


def param_shapes():
  """The params as ShapeDtypeStructs: what a converted folder holds."""
  return jax.eval_shape(FaceResNet().init, jax.random.key(0),
                        jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))['params']


# --- Converted weights. ---

def load_params(weights_dir):
  """Restores a folder written by `python -m weights_convert --source face_resnet` as (params,
  metadata); one-line errors as weights_folder.load's."""
  return weights_folder.load(weights_dir, 'face_resnet', 'face_resnet', param_shapes(),
                             CONVERT_COMMAND, '--tarball or --model-dir', '--config.weights')
