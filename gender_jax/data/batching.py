"""A split's examples and the batches cut from them.

`train_batches` and `eval_batches` cut a split into global batches and hand each process its
slice, so a batch's content never depends on the number of hosts.
"""
import dataclasses

import jax
import numpy as np

from gender_jax.data import augment as augment_lib


class Rows:
  """Some rows of an array (a RecordArray on disk, or numpy in memory), read when indexed."""

  def __init__(self, array, rows=None):
    self.array = array
    self.rows = np.arange(len(array)) if rows is None else np.asarray(rows)

  def __len__(self):
    return len(self.rows)

  @property
  def shape(self):
    return (len(self.rows), *self.array.shape[1:])

  @property
  def dtype(self):
    return self.array.dtype

  def __getitem__(self, index):
    """The rows at `index` (an int, slice, index array or mask), read into memory."""
    return np.asarray(self.array[self.rows[index]])

  def __array__(self, dtype=None, copy=None):
    return np.asarray(self[:], dtype)

  def __iter__(self):
    return (self[i] for i in range(len(self)))

  def subset(self, index):
    """The rows at `index`, still where they are."""
    return Rows(self.array, self.rows[index])


@dataclasses.dataclass
class Split:
  """One split's examples, in path order."""
  name: str
  images: Rows  # uint8 (N, S, S, 3) RGB at config.image_size; an array is wrapped.
  labels: np.ndarray  # int32 (N,), 0 female / 1 male.
  paths: list  # Paths relative to source_dir (for reports and file lists).
  source_dir: str
  bad_files: list = dataclasses.field(default_factory=list)  # (path, reason) left out.
  no_face: list = dataclasses.field(default_factory=list)  # Paths where no face was found.
  records: object = None  # input_cache.Records: where its images are cached, for derived caches.

  def __post_init__(self):
    if not isinstance(self.images, Rows):
      self.images = Rows(self.images)

  def __len__(self):
    return len(self.labels)

  def take(self, positions):
    """The split's examples at `positions` (no records: a part is not a protocol's split)."""
    return dataclasses.replace(self, images=self.images.subset(positions),
                               labels=self.labels[positions],
                               paths=[self.paths[i] for i in positions], records=None)



def _process_slice(batch_size, process_index, process_count):
  """This process's rows of each global batch."""
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if batch_size % process_count:
    raise ValueError(f'Batch size {batch_size} does not split over {process_count} processes.')
  local = batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)

def num_train_steps(split, batch_size):
  """Training steps per epoch: full global batches only."""
  return len(split) // batch_size



def train_batches(split, batch_size, *, seed, epoch, flip, shift=0.0, jitter=augment_lib.Jitter(),
                  with_images=True, process_index=None, process_count=None):
  """Yields this process's slice of each global training batch of one epoch.

  The order, flips, shifts and jitter are drawn for the whole epoch from (seed, epoch), so the
  global batches are the same for any number of processes. Keys: 'index', 'flip', 'label' and, if
  with_images, 'image' (uint8, flipped and shifted by up to shift * size pixels, then jittered).
  """
  steps = num_train_steps(split, batch_size)
  if not steps:
    raise ValueError(f'The {split.name} split has {len(split)} examples, fewer than one batch '
                     f'of {batch_size}.')
  local = _process_slice(batch_size, process_index, process_count)
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
      images = augment_lib.augment(split.images[index], flips[rows], shifts[rows])
      if jitter.geometric:
        images = augment_lib.jitter_geometry(images, factors[rows])
      if any(jitter.frame):
        images = augment_lib.jitter_frame(images, factors[rows])
      if jitter.photometric:
        images = augment_lib.jitter_colour(images, factors[rows])
      batch['image'] = images
    yield batch


def eval_batches(split, batch_size, *, process_index=None, process_count=None):
  """Yields this process's slice of each global evaluation batch, in order.

  The last batch is filled up with example 0 and 'mask' says which rows are real (1.0), so each
  example is counted exactly once.
  """
  local = _process_slice(batch_size, process_index, process_count)
  for start in range(0, len(split), batch_size):
    rows = np.arange(start, start + batch_size)[local]
    real = rows < len(split)
    index = np.where(real, rows, 0)
    yield {'index': index.astype(np.int32), 'label': split.labels[index],
           'image': split.images[index], 'mask': real.astype(np.float32)}
