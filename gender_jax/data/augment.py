"""A training epoch's batches, augmented: flips and shifts, then zoom, stretch, rotation, framing
and colour, each from ranges the config gives (all on the host, in numpy)."""
import dataclasses

import numpy as np

from gender_jax.data import batching
from gender_jax.faces import align


def augment(images, flip, shift):
  """Flips (bool (B,)) and shifts (int (B, 2): dy, dx pixels, edges repeated) a batch of images.

  output[y, x] = image[clip(y + dy), clip(x + dx)], then mirrored left-right if flipped.
  """
  size = images.shape[1]
  margin = int(np.abs(shift).max(initial=0))
  padded = np.pad(images, ((0, 0), (margin,) * 2, (margin,) * 2, (0, 0)), mode='edge') \
      if margin else images
  out = np.empty_like(images)
  # Slicing image by image copies whole rows; one fancy-index gather is 2-3x slower.
  for i, ((dy, dx), flipped) in enumerate(zip(shift, flip)):
    crop = padded[i, margin + dy:margin + dy + size, margin + dx:margin + dx + size]
    out[i] = crop[:, ::-1] if flipped else crop
  return out

@dataclasses.dataclass(frozen=True)
class Jitter:
  """Ranges of the random geometry, framing and colour changes of training images (0: off).

  scale: zoom by a factor in [1 - scale, 1 + scale]; aspect: stretch width against height by a
  factor in [1 - aspect, 1 + aspect]; rotate: degrees either way; brightness, contrast and
  saturation: factors in [1 - x, 1 + x]; frame: for half the images, cut up to these fractions
  of the square at the left, top, right and bottom edges and repeat the pixels at the cut, as
  alignment fills what lies outside a tightly cropped photo (face chips cut at the forehead).
  """
  scale: float = 0.0
  aspect: float = 0.0
  rotate: float = 0.0
  brightness: float = 0.0
  contrast: float = 0.0
  saturation: float = 0.0
  frame: tuple = (0.0, 0.0, 0.0, 0.0)

  @classmethod
  def from_config(cls, config):
    values = {f.name: config[f'augment_{f.name}'] for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(map(float, v)) if k == 'frame' else float(v)
                  for k, v in values.items()})

  def draw(self, rng, n):
    """Per-image factors (n, 10): scale, aspect, angle (radians), brightness, contrast,
    saturation, then the fractions cut at the left, top, right and bottom edges."""
    ranges = np.array([self.scale, self.aspect, np.deg2rad(self.rotate), self.brightness,
                       self.contrast, self.saturation])
    centres = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    factors = centres + ranges * rng.uniform(-1, 1, size=(n, len(ranges)))
    cuts = np.array(self.frame) * rng.uniform(0, 1, size=(n, 4)) * (rng.random((n, 1)) < 0.5)
    return np.hstack([factors, cuts])

  @property
  def geometric(self):
    return bool(self.scale or self.aspect or self.rotate)

  @property
  def photometric(self):
    return bool(self.brightness or self.contrast or self.saturation)


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


# ITU-R BT.601 luma, as Pillow's convert('L').
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def jitter_colour(images, factors):
  """Scales brightness, contrast (about the image's mean) and saturation (about its grey)."""
  brightness, contrast, saturation = (factors[:, k, None, None, None].astype(np.float32)
                                      for k in (3, 4, 5))
  x = images.astype(np.float32) * brightness
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  x = mean + contrast * (x - mean)
  grey = (x @ _LUMA)[..., None]
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


def train_batches(split, batch_size, *, seed, epoch, flip, shift=0.0, jitter=Jitter(),
                  with_images=True, process_index=None, process_count=None):
  """Yields this process's slice of each global training batch of one epoch.

  The order, flips, shifts and jitter are drawn for the whole epoch from (seed, epoch), so the
  global batches are the same for any number of processes. Keys: 'index', 'flip', 'label' and, if
  with_images, 'image' (uint8, flipped and shifted by up to shift * size pixels, then jittered).
  """
  steps = batching.num_train_steps(split, batch_size)
  if not steps:
    raise ValueError(f'The {split.name} split has {len(split)} examples, fewer than one batch '
                     f'of {batch_size}.')
  local = batching.process_slice(batch_size, process_index, process_count)
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(len(split))
  flips = (rng.random(len(split)) < 0.5) & bool(flip)
  size = split.images.shape[1]
  max_shift = int(shift * size)
  shifts = rng.integers(-max_shift, max_shift + 1, size=(len(split), 2))
  factors = jitter.draw(rng, len(split))  # Drawn last: flips and shifts stay as they were.
  for step in range(steps):
    rows = np.arange(step * batch_size, (step + 1) * batch_size)[local]
    index = order[rows]
    batch = {'index': index.astype(np.int32), 'flip': flips[rows], 'label': split.labels[index]}
    if with_images:
      images = augment(split.images[index], flips[rows], shifts[rows])
      if jitter.geometric:
        images = jitter_geometry(images, factors[rows])
      if any(jitter.frame):
        images = jitter_frame(images, factors[rows])
      if jitter.photometric:
        images = jitter_colour(images, factors[rows])
      batch['image'] = images
    yield batch
