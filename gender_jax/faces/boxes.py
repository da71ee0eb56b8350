"""MTCNN's box arithmetic and non-maximum suppression on the device, as facenet-pytorch computes
them in float32 (gender_jax/faces/detect.py runs them).

Arrays hold a fixed number of slots per image with a count of those in use, so every shape is
static. Nothing is sorted (XLA's sorts and top-k are slow on CPU): slots keep the order of the
cells they came from, compaction is a prefix sum and a scatter, and NMS compares each pair's
place in facenet-pytorch's order instead of sorting by it. NMS is greedy NMS found as a fixed
point: a box is kept unless a kept box before it overlaps it. Iterating that rule from "all
kept" settles each box once every box before it has settled, so the loop ends at greedy NMS's
exact answer, usually after a few rounds of whole-matrix work rather than one round per box.
"""
from jax import lax
import jax.numpy as jnp
import numpy as np


# XLA rewrites float arithmetic in ways that round otherwise than torch and numpy: a * b + c
# becomes one FMA (rounded once), x / broadcast(d) becomes x * broadcast(1 / d), (a / b) / c
# becomes a / (b * c). A select on the value's own NaN-ness hides it from those rewrites.
def _held(x, like=None):
  """x, unchanged; `like` (default x) is what its NaN test reads, for the shape XLA sees."""
  return jnp.where(jnp.isnan(x if like is None else like), jnp.nan, x)


def product(a, b):
  """a * b rounded on its own, as torch and numpy round it before an add."""
  return _held(a * b)


def quotient(a, b):
  """a / b rounded as one IEEE division, as torch and numpy divide."""
  return _held(a / _held(b, like=a))


def take(values, index):
  """values (B, N, ...) gathered along axis 1 by index (B, K)."""
  return jnp.take_along_axis(values, index.reshape(index.shape + (1,) * (values.ndim - 2)),
                             axis=1)


def first(mask, size):
  """The positions of the first `size` True entries of each row of mask (B, N), in order
  ((B, size), 0 past the count), and how many there are (B,)."""
  rows, n = mask.shape
  slot = jnp.cumsum(mask, axis=1) - 1
  target = jnp.where(mask & (slot < size), jnp.arange(rows)[:, None] * size + slot, rows * size)
  position = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), mask.shape)
  index = jnp.zeros(rows * size, jnp.int32).at[target.ravel()].set(
      position.ravel(), mode='drop', unique_indices=True)
  return index.reshape(rows, size), mask.sum(1)


def compact(mask, *arrays):
  """The slots of arrays (B, K, ...) where mask (B, K) holds, moved to the front in order;
  returns (their counts (B,), the arrays)."""
  index, count = first(mask, mask.shape[1])
  return count, [take(a, index) for a in arrays]


def in_use(count, slots):
  """(B, slots) mask of the first count[b] slots of each image."""
  return jnp.arange(slots) < count[:, None]


def _float32_below(threshold):
  """The largest float32 <= threshold: a float32 x is > threshold (a double, as torchvision
  compares) exactly where x > this."""
  below = np.float32(threshold)
  return below if float(below) <= threshold else np.nextafter(below, np.float32(-np.inf))


def iou(boxes):
  """torchvision's IoU of every pair of boxes (..., K, 4) -> (..., K, K), areas without +1."""
  x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
  area = product(x2 - x1, y2 - y1)
  w = jnp.maximum(0.0, jnp.minimum(x2[..., :, None], x2[..., None, :])
                  - jnp.maximum(x1[..., :, None], x1[..., None, :]))
  h = jnp.maximum(0.0, jnp.minimum(y2[..., :, None], y2[..., None, :])
                  - jnp.maximum(y1[..., :, None], y1[..., None, :]))
  inter = product(w, h)
  return quotient(inter, area[..., :, None] + area[..., None, :] - inter)


def precedes(*keys):
  """(..., K, K): whether slot i comes before slot j when sorted by keys (..., K) (the first
  most significant, each ascending), ties in slot order: a stable sort's order, unsorted."""
  k = keys[0].shape[-1]
  before = jnp.triu(jnp.ones((k, k), bool), 1)
  for key in reversed(keys):
    a, b = key[..., :, None], key[..., None, :]
    before = (a < b) | ((a == b) & before)
  return before


def greedy_keep(suppresses, candidate):
  """Greedy NMS: slot j is kept if it is a candidate and no kept slot i suppresses it
  (suppresses[..., i, j], only where i comes before j). Exact for any number of rounds the
  fixed point takes."""
  def round_(state):
    keep, _ = state
    new = candidate & ~jnp.any(keep[..., :, None] & suppresses, axis=-2)
    return new, jnp.any(new != keep)
  return lax.while_loop(lambda state: state[1], round_, (candidate, jnp.array(True)))[0]


def overlapping(iou_, threshold, before):
  """torchvision.ops.nms's suppression: IoU > threshold (a double), from the box before."""
  return (iou_ > _float32_below(threshold)) & before


def regress(boxes, reg, plus_one):
  """Applies a network's box regression: offsets in units of the box size (+1 as MATLAB where
  plus_one: R- and O-Net's bbreg; P-Net's step without it)."""
  w = boxes[..., 2] - boxes[..., 0] + plus_one
  h = boxes[..., 3] - boxes[..., 1] + plus_one
  return boxes + product(reg, jnp.stack([w, h, w, h], axis=-1))


def rerec(boxes):
  """Squares boxes around their centre on the longer side."""
  w = boxes[..., 2] - boxes[..., 0]
  h = boxes[..., 3] - boxes[..., 1]
  side = jnp.maximum(w, h)
  x1 = boxes[..., 0] + w * 0.5 - side * 0.5
  y1 = boxes[..., 1] + h * 0.5 - side * 0.5
  return jnp.stack([x1, y1, x1 + side, y1 + side], axis=-1)


def crop_bounds(boxes, height, width):
  """detect_face's crop bounds: 0-based (y, ey, x, ex), truncated and clipped to the image."""
  b = jnp.trunc(boxes).astype(jnp.int32)
  return (jnp.maximum(b[..., 1], 1) - 1, jnp.minimum(b[..., 3], height),
          jnp.maximum(b[..., 0], 1) - 1, jnp.minimum(b[..., 2], width))
