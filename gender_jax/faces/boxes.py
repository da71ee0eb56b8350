"""MTCNN's box arithmetic and non-maximum suppression on the device, as facenet-pytorch computes
them in float32 (gender_jax/faces/detect.py runs them).

Arrays hold a fixed number of slots per image with a count of those in use, so every shape is
static. Nothing is sorted (XLA's sorts and top-k are slow on CPU): slots keep the order of the
cells they came from, compaction is a prefix sum and a scatter, and NMS compares each pair's
place in facenet-pytorch's order instead of sorting by it. NMS is greedy NMS found as a fixed
point: a box is kept unless a kept box before it overlaps it. Iterating that rule from "all
kept" settles each box once every box before it has settled, so the loop ends at greedy NMS's
exact answer, usually after a few rounds of all-pairs work rather than one round per box. Each
round computes the pairs a block of columns at a time, so memory grows with the boxes, not
their square (a crowd photo has tens of thousands of candidate boxes).
"""
import math

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


NMS_PAIRS = 1 << 26  # Box pairs NMS holds at once, over all images: a bound on its memory.


def _pairs(values, columns):
  """values (..., K) as rows (..., K, 1) and their `columns` (C,) as (..., 1, C)."""
  return values[..., :, None], jnp.take(values, columns, axis=-1)[..., None, :]


def iou(boxes, columns):
  """torchvision's IoU of every box (..., K, 4) with those of `columns` (C,) -> (..., K, C),
  areas without +1."""
  (x1, x2), (y1, y2), (u1, u2), (v1, v2) = (_pairs(boxes[..., i], columns) for i in range(4))
  area = lambda x1, y1, x2, y2: product(x2 - x1, y2 - y1)
  w = jnp.maximum(0.0, jnp.minimum(u1, u2) - jnp.maximum(x1, x2))
  h = jnp.maximum(0.0, jnp.minimum(v1, v2) - jnp.maximum(y1, y2))
  inter = product(w, h)
  return quotient(inter, area(x1, y1, u1, v1) + area(x2, y2, u2, v2) - inter)


def precedes(keys, columns):
  """(..., K, C): whether slot i comes before slot j of `columns` (C,) when sorted by keys
  (..., K) (the first most significant, each ascending), ties in slot order: a stable sort's
  order, unsorted."""
  before = jnp.arange(keys[0].shape[-1])[:, None] < columns[None, :]
  for key in reversed(keys):
    a, b = _pairs(key, columns)
    before = (a < b) | ((a == b) & before)
  return before


def nms(boxes, keys, threshold, candidate, group=None):
  """torchvision.ops.nms of the `candidate` slots (..., K) of boxes (..., K, 4), in the order of
  `keys` (as `precedes`), each box suppressing those after it with IoU > threshold (a double);
  with `group` (..., K), only boxes of the same group. Returns which slots are kept. K is a
  power of two."""
  k, above = boxes.shape[-2], _float32_below(threshold)
  fit = max(1, NMS_PAIRS // (math.prod(boxes.shape[:-2]) * k))
  block = min(k, 1 << (fit.bit_length() - 1))  # Columns at once: a power of two, as k.

  def suppresses(columns):  # (..., K, C): whether box i suppresses box j of columns.
    pairs = (iou(boxes, columns) > above) & precedes(keys, columns)
    return pairs if group is None else pairs & jnp.equal(*_pairs(group, columns))
  by = lambda keep, pairs: jnp.any(keep[..., :, None] & pairs, axis=-2)
  if block == k:  # All pairs at once: computed once, not at every round.
    pairs = suppresses(jnp.arange(k))
    suppressed = lambda keep: by(keep, pairs)
  else:
    blocks = jnp.arange(k).reshape(-1, block)
    suppressed = lambda keep: jnp.moveaxis(
        lax.map(lambda columns: by(keep, suppresses(columns)), blocks), 0, -2).reshape(keep.shape)

  def round_(state):
    keep, _ = state
    new = candidate & ~suppressed(keep)
    return new, jnp.any(new != keep)
  return lax.while_loop(lambda state: state[1], round_, (candidate, jnp.array(True)))[0]


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
