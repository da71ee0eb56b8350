"""MTCNN's three networks (facenet-pytorch's `PNet`, `RNet`, `ONet` in NHWC) and their converted
weights, as `python -m weights_convert --source mtcnn` writes them. The cascade that runs them is
gender_jax/faces/detect.py.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from gender_jax.models import weights_folder

CONVERT_COMMAND = 'python -m weights_convert --source mtcnn --download --out {}'


# --- Networks: facenet-pytorch's, in NHWC. ---

class PReLU(nn.Module):
  """torch.nn.PReLU(num_parameters=C): a learned slope per channel (last axis) below zero."""

  @nn.compact
  def __call__(self, x):
    slope = self.param('negative_slope', nn.initializers.constant(0.25), (x.shape[-1],))
    return jnp.where(x >= 0, x, slope * x)


def max_pool_ceil(x, window, stride):
  """torch's MaxPool2d(window, stride, ceil_mode=True): a last, partial window where the input
  does not divide evenly (padded with -inf, so it is the max of what the window covers)."""
  pads = []
  for n in x.shape[1:3]:
    out = -(-(n - window) // stride) + 1
    pads.append((0, (out - 1) * stride + window - n))
  return nn.max_pool(x, (window, window), (stride, stride), padding=pads)


def _torch_flatten(x):
  """facenet-pytorch flattens NCHW features permuted to (N, W, H, C); the dense weights expect
  it."""
  return x.transpose(0, 2, 1, 3).reshape(x.shape[0], -1)


class PNet(nn.Module):
  """MTCNN's proposal network: a 12x12 window every 2 px -> (box regression, face probability)."""

  @nn.compact
  def __call__(self, x, valid=None):
    """x: (B, H, W, 3) normalised images. `valid` (B, 2): each image's true (h, w) when x is
    padded (with any values) below and right to a shared shape; outputs from row
    `pyramid.pnet_cells(h)` (and column `pyramid.pnet_cells(w)`) on are then meaningless, the
    others equal the unpadded image's."""
    x = PReLU(name='prelu1')(nn.Conv(10, (3, 3), padding='VALID', name='conv1')(x))
    if valid is not None:
      # Padded pixels must not enter the ceil-mode pool's last, partial window.
      rows = jnp.arange(x.shape[1]) < valid[:, :1] - 2
      cols = jnp.arange(x.shape[2]) < valid[:, 1:] - 2
      x = jnp.where(rows[:, :, None, None] & cols[:, None, :, None], x, -jnp.inf)
      x = max_pool_ceil(x, 2, 2)
      x = jnp.where(jnp.isneginf(x), 0.0, x)  # No inf * weight = NaN in the ignored outputs.
    else:
      x = max_pool_ceil(x, 2, 2)
    x = PReLU(name='prelu2')(nn.Conv(16, (3, 3), padding='VALID', name='conv2')(x))
    x = PReLU(name='prelu3')(nn.Conv(32, (3, 3), padding='VALID', name='conv3')(x))
    prob = nn.softmax(nn.Conv(2, (1, 1), name='conv4_1')(x), axis=-1)
    return nn.Conv(4, (1, 1), name='conv4_2')(x), prob


class RNet(nn.Module):
  """MTCNN's refinement network: 24x24 crops -> (box regression, face probability)."""

  @nn.compact
  def __call__(self, x):
    x = PReLU(name='prelu1')(nn.Conv(28, (3, 3), padding='VALID', name='conv1')(x))
    x = max_pool_ceil(x, 3, 2)
    x = PReLU(name='prelu2')(nn.Conv(48, (3, 3), padding='VALID', name='conv2')(x))
    x = max_pool_ceil(x, 3, 2)
    x = PReLU(name='prelu3')(nn.Conv(64, (2, 2), padding='VALID', name='conv3')(x))
    x = PReLU(name='prelu4')(nn.Dense(128, name='dense4')(_torch_flatten(x)))
    prob = nn.softmax(nn.Dense(2, name='dense5_1')(x), axis=-1)
    return nn.Dense(4, name='dense5_2')(x), prob


class ONet(nn.Module):
  """MTCNN's output network: 48x48 crops -> (box regression, 10 landmark coords, probability)."""

  @nn.compact
  def __call__(self, x):
    x = PReLU(name='prelu1')(nn.Conv(32, (3, 3), padding='VALID', name='conv1')(x))
    x = max_pool_ceil(x, 3, 2)
    x = PReLU(name='prelu2')(nn.Conv(64, (3, 3), padding='VALID', name='conv2')(x))
    x = max_pool_ceil(x, 3, 2)
    x = PReLU(name='prelu3')(nn.Conv(64, (3, 3), padding='VALID', name='conv3')(x))
    x = max_pool_ceil(x, 2, 2)
    x = PReLU(name='prelu4')(nn.Conv(128, (2, 2), padding='VALID', name='conv4')(x))
    x = PReLU(name='prelu5')(nn.Dense(256, name='dense5')(_torch_flatten(x)))
    prob = nn.softmax(nn.Dense(2, name='dense6_1')(x), axis=-1)
    return nn.Dense(4, name='dense6_2')(x), nn.Dense(10, name='dense6_3')(x), prob


NETWORKS = {'pnet': (PNet, 12), 'rnet': (RNet, 24), 'onet': (ONet, 48)}  # name: (module, input px)


def param_shapes():
  """{'pnet': ..., 'rnet': ..., 'onet': ...} params as ShapeDtypeStructs: what a converted folder
  holds."""
  return {name: jax.eval_shape(module().init, jax.random.key(0),
                               jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))['params']
          for name, (module, size) in NETWORKS.items()}


# --- Converted weights. ---

def load_params(weights_dir):
  """Restores a folder written by `python -m weights_convert --source mtcnn` as (params,
  metadata); one-line errors as weights_folder.load's."""
  return weights_folder.load(weights_dir, 'mtcnn', 'MTCNN', param_shapes(), CONVERT_COMMAND,
                             '--wheel or --pt-dir', '--config.face_detector_weights')
