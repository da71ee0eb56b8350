"""The host (numpy, Pillow) augmentation gender_jax used before it moved into the training step:
the reference that gender_jax.data.augment.apply is checked against, image by image."""
import numpy as np

from gender_jax.data import augment
from gender_jax.faces import align


def shift_and_flip(images, flip, shift):
  """output[y, x] = image[clip(y + dy), clip(x + dx)], then mirrored left-right if flipped."""
  size = images.shape[1]
  margin = int(np.abs(shift).max(initial=0))
  padded = np.pad(images, ((0, 0), (margin,) * 2, (margin,) * 2, (0, 0)), mode='edge') \
      if margin else images
  out = np.empty_like(images)
  for i, ((dy, dx), flipped) in enumerate(zip(shift, flip)):
    crop = padded[i, margin + dy:margin + dy + size, margin + dx:margin + dx + size]
    out[i] = crop[:, ::-1] if flipped else crop
  return out


def jitter_geometry(images, factors):
  """Zooms, stretches and rotates each image about its centre; edge pixels fill what comes in."""
  size = images.shape[1]
  centre = np.array([size / 2, size / 2])
  out = np.empty_like(images)
  for i, (scale, aspect, angle) in enumerate(factors[:, :3]):
    cos, sin = np.cos(angle), np.sin(angle)
    linear = np.array([[cos, -sin], [sin, cos]]) @ np.diag([scale * aspect, scale / aspect])
    matrix = np.hstack([linear, (centre - linear @ centre)[:, None]])
    out[i] = align.warp_affine(images[i], matrix, size)
  return out


def jitter_colour(images, factors):
  """Scales brightness, contrast (about the image's mean) and saturation (about its grey)."""
  brightness, contrast, saturation = (factors[:, k, None, None, None].astype(np.float32)
                                      for k in (3, 4, 5))
  x = images.astype(np.float32) * brightness
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  x = mean + contrast * (x - mean)
  grey = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
  x = grey + saturation * (x - grey)
  return np.rint(np.clip(x, 0, 255)).astype(np.uint8)


def jitter_frame(images, factors):
  """Cuts each image at the fractions factors[:, 6:10] (left, top, right, bottom) of its side and
  repeats the pixels at the cut outwards."""
  size = images.shape[1]
  out = np.empty_like(images)
  positions = np.arange(size)
  for i, (left, top, right, bottom) in enumerate(factors[:, 6:10]):
    x0, y0 = int(left * size), int(top * size)
    x1, y1 = size - 1 - int(right * size), size - 1 - int(bottom * size)
    out[i] = images[i][np.clip(positions, y0, y1)][:, np.clip(positions, x0, x1)]
  return out


def apply(images, draws, jitter):
  """What augment.apply makes of a batch, made on the host as before, one image at a time."""
  draws = np.asarray(draws, np.float64)
  column = {name: k for k, name in enumerate(augment.DRAWS)}
  shifts = draws[:, [column['dy'], column['dx']]].astype(int)
  images = shift_and_flip(images, draws[:, column['flip']] > 0, shifts)
  factors = draws[:, column['scale']:]  # As the host's Jitter.draw made them.
  if jitter.geometric:
    images = jitter_geometry(images, factors)
  if any(jitter.frame):
    images = jitter_frame(images, factors)
  if jitter.photometric:
    images = jitter_colour(images, factors)
  return images

