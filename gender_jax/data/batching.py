"""A split's examples and how global batches are cut from them.

`eval_batches` (and augment.train_batches) cut a split into global batches and hand each process
its slice, so a batch's content never depends on the number of hosts.
"""
import dataclasses

import jax
import numpy as np

from gender_jax.data import record_files


@dataclasses.dataclass
class Split:
  """One split's examples, in path order."""
  name: str
  images: record_files.Rows  # uint8 (N, S, S, 3) RGB at config.image_size; an array is wrapped.
  labels: np.ndarray  # int32 (N,), 0 female / 1 male.
  paths: list  # Paths relative to source_dir (for reports and file lists).
  source_dir: str
  bad_files: list = dataclasses.field(default_factory=list)  # (path, reason) left out.
  no_face: list = dataclasses.field(default_factory=list)  # Paths where no face was found.
  records: object = None  # input_cache.Records: where its images are cached, for derived caches.

  def __post_init__(self):
    if not isinstance(self.images, record_files.Rows):
      self.images = record_files.Rows(self.images)

  def __len__(self):
    return len(self.labels)

  def take(self, positions):
    """The split's examples at `positions` (no records: a part is not a protocol's split)."""
    return dataclasses.replace(self, images=self.images.subset(positions),
                               labels=self.labels[positions],
                               paths=[self.paths[i] for i in positions], records=None)


def process_slice(batch_size, process_index, process_count):
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


def eval_batches(split, batch_size, *, process_index=None, process_count=None):
  """Yields this process's slice of each global evaluation batch, in order.

  The last batch is filled up with example 0 and 'mask' says which rows are real (1.0), so each
  example is counted exactly once.
  """
  local = process_slice(batch_size, process_index, process_count)
  for start in range(0, len(split), batch_size):
    rows = np.arange(start, start + batch_size)[local]
    real = rows < len(split)
    index = np.where(real, rows, 0)
    yield {'index': index.astype(np.int32), 'label': split.labels[index],
           'image': split.images[index], 'mask': real.astype(np.float32)}
