"""One evaluation path: a model over every example of a split, on every device.

Training (validation each epoch, the final test), `evaluate`, `predict`, the report and feature
caching all get logits (or base features) from here: batches sharded over a device mesh with a
'batch' axis, the last batch padded and its padding masked out, one compilation per model.
"""
import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import tqdm

from gender_jax.data import batching


def forward(variables, apply_fn, batch, *, train, rngs=None, stop_base_gradient=False):
  """(logits, batch_stats) of a batch holding either 'image' (uint8) or cached base 'features'.

  batch_stats are the base's BatchNorm statistics, updated with this batch when a trainable base
  trains on images, else as given. A frozen base runs as at evaluation (and as when its features
  were cached), its statistics untouched.
  """
  batch_stats = variables.get('batch_stats', {})
  if 'features' in batch:
    features = batch['features']
  else:
    base_trains = train and not stop_base_gradient
    features, updates = apply_fn(variables, batch['image'], train=base_trains, method='encode',
                                 mutable=['batch_stats'] if base_trains else [])
    batch_stats = updates.get('batch_stats', batch_stats)
    if stop_base_gradient:  # A frozen base needs no backward pass at all.
      features = jax.lax.stop_gradient(features)
  logits = apply_fn(variables, features, train=train, rngs=rngs, method='classify')
  return logits, batch_stats


def eval_step(variables, batch, *, apply_fn):
  """Male logits of a batch (padding included; the caller drops it by mask)."""
  return forward(variables, apply_fn, batch, train=False)[0]


@dataclasses.dataclass(frozen=True)
class Mesh:
  """The device mesh and the shardings the steps use."""
  mesh: jax.sharding.Mesh

  @classmethod
  def create(cls, devices=None):
    devices = np.asarray(jax.devices() if devices is None else devices)
    return cls(jax.sharding.Mesh(devices, ('batch',)))

  @property
  def data(self):
    return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec('batch'))

  @property
  def replicated(self):
    return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())

  @property
  def size(self):
    return self.mesh.devices.size

  @property
  def local_size(self):
    return len(self.mesh.local_devices)

  @property
  def platform(self):
    return self.mesh.devices.flat[0].platform

  def shard_batch(self, batch):
    """Process-local numpy arrays -> global arrays sharded over the 'batch' axis."""
    return {k: jax.make_array_from_process_local_data(self.data, np.asarray(v))
            for k, v in batch.items()}

  def gather(self, array):
    """A batch-sharded global array -> the whole array as numpy on every process."""
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


@functools.cache  # One compiled step per mesh and model, reused by every split and epoch.
def jit_eval_step(mesh, apply_fn):
  return jax.jit(functools.partial(eval_step, apply_fn=apply_fn),
                 in_shardings=(mesh.replicated, mesh.data), out_shardings=mesh.data)


@functools.cache
def jit_encode(mesh, apply_fn):
  """Base features as float32, the dtype the feature cache keeps, cast on the devices: on the
  host, the cast of bfloat16 features is a pass over every value beside the devices' work
  (benchmarks/RESULTS.md#results-fetched-while-computing)."""
  return jax.jit(
      lambda variables, images: apply_fn(variables, images, method='encode').astype(jnp.float32),
      in_shardings=(mesh.replicated, mesh.data), out_shardings=mesh.data)


def check_batch_size(batch_size, mesh):
  if batch_size % mesh.size:
    raise ValueError(f'batch_size {batch_size} must be a multiple of the {mesh.size} devices.')


# XLA:CPU's Eigen convolutions (gender_jax's CPU default) ask for the packed patches of a whole
# dispatch in one allocation, which grows with the batch until a large one aborts the process
# (std::bad_alloc). On CPU each device therefore gets at most this many pixels a dispatch: 8 VGG16
# images at 224 px, which also ran faster per image than larger pieces
# (benchmarks/RESULTS.md#bounded-inference-memory and #winograd).
CPU_PIXELS_PER_DISPATCH = 8 * 224 * 224


def dispatch_rows(mesh, arrays):
  """How many rows of a process-local batch to dispatch at once: all of them, except on CPU,
  where each device's share is cut to a divisor (one shape, one compilation) that keeps its
  images within CPU_PIXELS_PER_DISPATCH."""
  rows = len(next(iter(arrays.values())))
  if mesh.platform != 'cpu':
    return rows
  pixels = max((a.shape[1] * a.shape[2] for a in arrays.values() if a.ndim == 4), default=1)
  per_device = rows // mesh.local_size
  most = max(1, CPU_PIXELS_PER_DISPATCH // pixels)
  piece = max(d for d in range(1, min(most, per_device) + 1) if per_device % d == 0)
  return piece * mesh.local_size


# Results are fetched this many pieces behind the dispatches: the devices compute the next pieces
# while the host copies one back, and no more than this many results wait on the devices. Fetched
# only after the last dispatch, a GPU split's features left far slower than the bare network ran
# (benchmarks/RESULTS.md#gpu).
PIECES_IN_FLIGHT = 2


def map_split(mesh, fn, split, batch_size, inputs, desc=None):
  """fn(sharded inputs(batch)) over every example of a split in order, as numpy.

  Each result is fetched PIECES_IN_FLIGHT pieces (of `dispatch_rows`) after its dispatch and
  written into the output in place, so the host prepares and copies while the devices compute;
  the padding of the last batch is dropped by its mask, and pieces of padding alone are not
  computed.
  """
  check_batch_size(batch_size, mesh)
  single_process = jax.process_count() == 1  # Else every process must run the same pieces.
  total = -(-len(split.labels) // batch_size)
  pending = collections.deque()
  result, filled = None, 0

  def fetch_oldest():
    nonlocal result, filled
    out, mask = pending.popleft()
    values, keep = mesh.gather(out), mesh.gather(mask) > 0
    if not keep.all():
      values = values[keep]
    if result is None:
      result = np.empty((len(split.labels), *values.shape[1:]), values.dtype)
    values = values[:len(result) - filled]
    result[filled:filled + len(values)] = values
    filled += len(values)

  for batch in tqdm.tqdm(batching.eval_batches(split, batch_size), total=total, desc=desc,
                         leave=False, disable=desc is None):
    arrays = {**inputs(batch), 'mask': batch['mask']}
    rows = dispatch_rows(mesh, arrays)
    for start in range(0, len(batch['mask']), rows):
      if single_process and not batch['mask'][start:start + rows].any():
        continue  # Only padding (a short last batch, one photo): nothing to compute.
      piece = mesh.shard_batch({k: v[start:start + rows] for k, v in arrays.items()})
      mask = piece.pop('mask')
      out = fn(piece)
      out.copy_to_host_async()  # Starts as soon as it is computed, beside the next pieces.
      pending.append((out, mask))
      if len(pending) > PIECES_IN_FLIGHT:
        fetch_oldest()
  while pending:
    fetch_oldest()
  if result is None:
    raise ValueError(f'Split {split.name!r} has no examples to compute.')
  return result


def predict_logits(mesh, apply_fn, variables, split, batch_size, features=None, desc=None):
  """Logits of every example of a split, from its images or its cached base features."""
  step = jit_eval_step(mesh, apply_fn)
  if features is None:
    inputs = lambda batch: {'image': batch['image']}
  else:
    inputs = lambda batch: {'features': features[batch['index']]}
  return map_split(mesh, lambda batch: step(variables, batch), split, batch_size, inputs, desc)


def extract_features(mesh, apply_fn, variables, split, batch_size, flip=False, desc=None):
  """Base features of every example of a split, as float32 numpy (N, h, w, c)."""
  encode = jit_encode(mesh, apply_fn)
  if flip:
    inputs = lambda batch: {'image': batch['image'][:, :, ::-1]}
  else:
    inputs = lambda batch: {'image': batch['image']}
  return map_split(mesh, lambda batch: encode(variables, batch['image']), split, batch_size,
                   inputs, desc)


def predict_images(model, variables, images, batch_size=256, mesh=None):
  """Male logits of uint8 images already at the model's size, (N, S, S, 3) -> (N,), over every
  device (batch_size rounded up to a multiple of them)."""
  mesh = mesh or Mesh.create()
  batch_size = min(batch_size, len(images))  # A few photos: no batch of padding around them.
  batch_size = -(-batch_size // mesh.size) * mesh.size
  split = batching.Split('images', images, np.zeros(len(images), np.int32), paths=[],
                               source_dir='')
  if not len(split):
    return np.zeros((0,), np.float32)
  return predict_logits(mesh, model.apply, variables, split, batch_size)
