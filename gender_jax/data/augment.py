"""A training epoch's batches and their augmentation: the host draws each image's flip, shift,
zoom, stretch, rotation, framing and colour factors (from ranges the config gives) and gathers the
uint8 rows; `apply`, inside the jitted training step, makes the augmented images on the devices.
"""
import dataclasses

import jax.numpy as jnp
import numpy as np

from gender_jax.data import batching

# The columns of a batch's 'augment' array: one row of draws per image.
DRAWS = ('flip', 'dy', 'dx', 'scale', 'aspect', 'angle', 'brightness', 'contrast', 'saturation',
         'left', 'top', 'right', 'bottom')
_COLUMN = {name: k for k, name in enumerate(DRAWS)}


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


def train_batches(split, batch_size, *, seed, epoch, flip, shift=0.0, jitter=Jitter(),
                  with_images=True, process_index=None, process_count=None):
  """Yields this process's slice of each global training batch of one epoch.

  The order and every image's draws are made for the whole epoch from (seed, epoch), so the
  global batches are the same for any number of processes. Keys: 'index', 'flip', 'label' and,
  if with_images, 'image' (the uint8 rows as stored) and 'augment' (float32 (B, len(DRAWS)):
  the flip, a shift of up to shift * size pixels and the jitter's factors, for `apply`).
  """
  steps = batching.num_train_steps(split, batch_size)
  if not steps:
    raise ValueError(f'The {split.name} split has {len(split)} examples, fewer than one batch '
                     f'of {batch_size}.')
  local = batching.process_slice(batch_size, process_index, process_count)
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(len(split))
  flips = (rng.random(len(split)) < 0.5) & bool(flip)
  max_shift = int(shift * split.images.shape[1])
  shifts = rng.integers(-max_shift, max_shift + 1, size=(len(split), 2))
  factors = jitter.draw(rng, len(split))  # Drawn last: flips and shifts stay as they were.
  draws = np.hstack([flips[:, None], shifts, factors]).astype(np.float32)
  for step in range(steps):
    rows = np.arange(step * batch_size, (step + 1) * batch_size)[local]
    index = order[rows]
    batch = {'index': index.astype(np.int32), 'flip': flips[rows], 'label': split.labels[index]}
    if with_images:
      batch.update(image=split.images[index], augment=draws[rows])
    yield batch


# ITU-R BT.601 luma, as Pillow's convert('L').
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def apply(images, draws, jitter):
  """The augmented images (uint8 (B, S, S, 3)) of a batch: jax, for the jitted training step.

  draws: the batch's 'augment' rows. In order: the image is flipped left-right and shifted
  (output[y, x] = image[y + dy, x + dx], edges repeated), zoomed, stretched and rotated about its
  centre (bilinear, edges repeated; cut to uint8), cut at its frame (the pixels at the cut
  repeated outwards), then its brightness, contrast (about its mean) and saturation (about its
  grey) scaled. The geometry is index arithmetic: one gather per bilinear corner of each output
  pixel's source pixels, in the stored image.
  """
  size = images.shape[1]
  column = lambda name: draws[:, _COLUMN[name], None, None]
  grid = jnp.meshgrid(jnp.arange(size), jnp.arange(size), indexing='ij')
  y, x = (jnp.broadcast_to(g, (len(draws), size, size)) for g in grid)
  if any(jitter.frame):
    y, x = _framed(y, x, column, size)
  if jitter.geometric:
    y0, x0, dy, dx = _warped(y, x, column, size)
    corners = [(y0, x0, (1 - dy) * (1 - dx)), (y0, x0 + 1, (1 - dy) * dx),
               (y0 + 1, x0, dy * (1 - dx)), (y0 + 1, x0 + 1, dy * dx)]
  else:
    corners = [(y, x, 1.0)]
  pixels = jnp.asarray(images).reshape(-1, images.shape[-1])  # The batch's: a gather per corner.
  offsets = (jnp.arange(len(images)) * size * size)[:, None, None]
  # Summed corner by corner: XLA's CPU backend made a reduction over stacked corners 30x slower.
  # The indices are clamped into the batch: promising so spares the gather XLA's bound checks.
  gather = lambda index: pixels.at[index + offsets].get(mode='promise_in_bounds')
  out = sum(gather(_source_index(yy, xx, column, size)) * jnp.asarray(w)[..., None]
            for yy, xx, w in corners)
  if jitter.geometric:  # As Pillow's transform (faces.align.warp_affine): truncated to uint8.
    out = jnp.floor(out)
  if jitter.photometric:
    out = _coloured(out, column)
  return jnp.clip(out, 0, 255).astype(jnp.uint8)


def _framed(y, x, column, size):
  """Output pixels -> the pixels of the uncut image they repeat (the frame's cut, clamped)."""
  cut = lambda name: jnp.floor(column(name) * size).astype(jnp.int32)
  return (jnp.clip(y, cut('top'), size - 1 - cut('bottom')),
          jnp.clip(x, cut('left'), size - 1 - cut('right')))


def _warped(y, x, column, size):
  """Output pixels -> the top-left source pixel (y, x) and the bilinear fractions (y, x) of the
  zoom, stretch and rotation about the centre (pixel centres at +0.5, as Pillow's)."""
  scale, aspect, angle = column('scale'), column('aspect'), column('angle')
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  centre = size / 2
  # The inverse of rotation @ diag(scale * aspect, scale / aspect).
  u, v = x + 0.5 - centre, y + 0.5 - centre
  src_x = (cos * u + sin * v) / (scale * aspect) + centre - 0.5
  src_y = (-sin * u + cos * v) * aspect / scale + centre - 0.5
  x0, y0 = jnp.floor(src_x), jnp.floor(src_y)
  return y0.astype(jnp.int32), x0.astype(jnp.int32), src_y - y0, src_x - x0


def _source_index(y, x, column, size):
  """The index, in its stored image, of each of the flipped, shifted images' pixels (y, x),
  edges repeated at each step as the steps do."""
  y, x = jnp.clip(y, 0, size - 1), jnp.clip(x, 0, size - 1)
  x = jnp.where(column('flip') > 0, size - 1 - x, x)
  y = jnp.clip(y + column('dy').astype(jnp.int32), 0, size - 1)
  x = jnp.clip(x + column('dx').astype(jnp.int32), 0, size - 1)
  return y * size + x


def _coloured(images, column):
  """Scales brightness, contrast (about the image's mean) and saturation (about its grey)."""
  x = images * column('brightness')[..., None]
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  x = mean + column('contrast')[..., None] * (x - mean)
  grey = sum(x[..., k, None] * float(_LUMA[k]) for k in range(3))  # Fuses, unlike a dot.
  return jnp.rint(grey + column('saturation')[..., None] * (x - grey))
