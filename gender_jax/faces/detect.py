"""MTCNN face detection (boxes, scores, 5 landmarks) in Flax, equal to facenet-pytorch's MTCNN.

The three networks (gender_jax/faces/mtcnn.py) are facenet-pytorch's `PNet`, `RNet` and `ONet`
(facenet_pytorch/models/mtcnn.py) with its weights, converted by `python -m weights_convert --source
mtcnn`. The cascade is its `detect_face` (models/utils/detect_face.py) with MTCNN's defaults, step
for step and in float32 like torch, so boxes, scores and landmarks match it (tested against
facenet-pytorch):

1. P-Net on an image pyramid ('area' resampling, scale 12 / min_face_size, then x factor while
   the short side stays >= 12 px); cells with face probability >= thresholds[0] become boxes,
   NMS (IoU 0.5) per scale, NMS (IoU 0.7) over all scales, box regression, squared.
2. R-Net on 24x24 'area' crops of those boxes: probability > thresholds[1], NMS (IoU 0.7),
   regression, squared.
3. O-Net on 48x48 crops: probability > thresholds[2], landmarks, regression, NMS on intersection
   over the smaller box ('Min', 0.7).

All of it but the last NMS runs on the device, a batch of images at a time, in four jitted
stages (pyramid and P-Net; P-Net's boxes and their NMS; R-Net; O-Net) that the host dispatches
and between which it reads only counts: each stage holds a fixed number of box slots per image,
and the counts size the next stage's slots and crops in powers of two. Images are padded to
size buckets (gender_jax/faces/pyramid.py), so few shapes get compiled; the box arithmetic and
the NMS are gender_jax/faces/boxes.py. The 'Min' NMS stays on the host, in numpy, on the few
boxes O-Net passes: facenet-pytorch breaks its ties by numpy's own argsort. An image's faces
do not depend on the other images in the batch (facenet-pytorch offsets each image's boxes by
a float32 multiple of its index for NMS, which does), up to the rounding of the networks' sums,
which XLA does differently for other batch sizes.

Equal up to float32 rounding: the networks' sums differ from torch's in the last bits, which
moves nothing, except where a box edge lands within that of an integer (a crop bound truncates
to the other side) and near-tied candidates then swap. On 2,000 CelebA crops and 2,000 UTKFace
chips, one chip's box differed by more than 1 px (a different candidate of the same face).
"""
import functools
import hashlib
import json
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from gender_jax.faces import boxes as boxes_lib
from gender_jax.faces import mtcnn
from gender_jax.faces import pyramid

MAX_PYRAMID_PIXELS = 1 << 22  # Image pixels per call: bounds the memory a call holds.
# XLA:CPU runs the networks fastest on batches whose activations stay in its caches: P-Net on
# about this many input pixels at a time, R- and O-Net on this many crops, one batch after
# another. An accelerator takes each stage's images and crops in one batch.
CPU_PNET_PIXELS = 1 << 16
CPU_CROPS = {'rnet': 32, 'onet': 16}
# The face finding that cached landmarks come from: bump it with any change to gender_jax/faces/
# or to how input_cache.cached_landmarks batches images that moves a landmark, so caches made
# before are not reused. Version 3: each record's image found alone.
FACE_FINDING_VERSION = 3


def detector_id(weights_metadata):
  """An id of the MTCNN weights (their metadata) and of FACE_FINDING_VERSION, for cache names:
  cached landmarks and the faces aligned with them are named by it."""
  key = {'weights': weights_metadata.get('pt_sha256'), 'version': FACE_FINDING_VERSION}
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


class Faces(NamedTuple):
  """The faces in one image, highest score first."""
  boxes: np.ndarray  # float32 (N, 4): x1, y1, x2, y2 in pixels of the input image.
  scores: np.ndarray  # float32 (N,): O-Net face probability.
  # float32 (N, 5, 2): (x, y) of left eye, right eye, nose, left mouth corner, right mouth corner
  # (facenet-pytorch's order; left and right as seen in the image).
  landmarks: np.ndarray


def no_faces():
  return Faces(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32),
               np.zeros((0, 5, 2), np.float32))


def area_windows(size_in, size_out, start=0):
  """torch's adaptive average pooling windows: [floor(i n / m), ceil((i + 1) n / m)), i < m.

  `size_in` and `start` may be arrays (one crop each; numpy, or traced on the device): then
  (K, m) arrays, offset by `start`.
  """
  size_in, start = (x[..., None] if hasattr(x, 'ndim') else x for x in (size_in, start))
  i = np.arange(size_out, dtype=np.int32)
  return start + i * size_in // size_out, start - (-(i + 1) * size_in // size_out)


@jax.jit
def summed_area(images):
  """(B, H + 1, W + 1, 3) uint32 summed-area tables of uint8 images.

  Sums wrap modulo 2^32, but the difference of four entries, a window's sum, is exact as long
  as the true sum fits: any window under 16 million pixels.
  """
  table = jnp.asarray(images, jnp.uint32)
  for axis in (1, 2):  # XLA's cumsum is slower here.
    table = lax.associative_scan(jnp.add, table, axis=axis)
  return jnp.pad(table, ((0, 0), (1, 0), (1, 0), (0, 0)))


def _window_means(sums, rows, cols):
  """Window sums divided by the window height and then its width in float32, as torch does."""
  (r0, r1), (c0, c1) = rows, cols
  heights, widths = ((end - start)[..., None].astype(jnp.float32)
                     for start, end in ((r0, r1), (c0, c1)))
  return boxes_lib.quotient(boxes_lib.quotient(sums.astype(jnp.float32), heights), widths)


def _shared_area_resize(table, rows, cols):
  """torch's interpolate(mode='area'), bit for bit, of every image of summed-area tables
  `table` onto the same (m,) (start, end) windows of `area_windows`: rows, then columns."""
  (r0, r1), (c0, c1) = rows, cols
  band = table[:, r1] - table[:, r0]
  return _window_means(band[:, :, c1] - band[:, :, c0], (r0[:, None], r1[:, None]), (c0, c1))


def _crop_area_resize(corners, height, width, index, rows, cols):
  """torch's interpolate(mode='area'), bit for bit, of one crop per index (K,) of summed-area
  tables of `height` x `width` entries, flattened to corners (N, 3) (one index per corner,
  cheaper than three), onto (K, m) windows of `area_windows`."""
  (r0, r1), (c0, c1) = rows, cols
  top, bottom = ((index[:, None, None] * height + r[:, :, None]) * width for r in (r0, r1))
  left, right = c0[:, None, :], c1[:, None, :]
  sums = (corners[bottom + right] - corners[top + right] - corners[bottom + left]
          + corners[top + left])
  return _window_means(sums, (r0[:, :, None], r1[:, :, None]), (left, right))


def normalize(pixels):
  """MTCNN's input scaling, in float32 as detect_face: (x - 127.5) / 128."""
  return (pixels - np.float32(127.5)) * np.float32(0.0078125)


def nms_min(boxes, scores, threshold):
  """facenet-pytorch's nms_numpy(method='Min'), O-Net's last step: areas with +1, overlap over
  the smaller box, kept while <= threshold; numpy's own argsort, so ties break as there."""
  if len(scores) < 2:
    return np.arange(len(scores))
  x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
  area = (x2 - x1 + 1) * (y2 - y1 + 1)
  order = np.argsort(scores)
  pick = []
  while order.size:
    i, rest = order[-1], order[:-1]
    pick.append(i)
    w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
    h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
    order = order[np.where(w * h / np.minimum(area[i], area[rest]) <= threshold)]
  return np.array(pick, np.int64)


class _Levels(NamedTuple):
  """P-Net's levels for images of one size, padded to a size bucket; arrays on the device."""
  shape: tuple  # (H, W) the images are padded to.
  plan: tuple  # Per level (scale, h, w) of the padded level: static, what gets compiled.
  sizes: jax.Array  # int32 (L, 2): each level's true (h, w); 0 past the image's own levels.
  # int32 (L, 2, 2, M): per level, the (start, end) windows of `area_windows` onto its rows and
  # its columns, padded with windows that read a pixel P-Net ignores.
  windows: jax.Array
  grid: jax.Array  # float32 (N, 4): x, y, scale, level of each P-Net cell, as _pnet_stage's.


@functools.lru_cache(maxsize=64)
def _levels(height, width, min_face_size, factor):
  """The levels of detect_face's pyramid (level sizes in Python floats, as there)."""
  shape = (pyramid.bucket(height, 8, 12), pyramid.bucket(width, 8, 12))
  scales = pyramid.scales(*shape, min_face_size, factor)
  plan = tuple((s, int(shape[0] * s + 1), int(shape[1] * s + 1)) for s in scales)
  own = pyramid.scales(height, width, min_face_size, factor)
  sizes = [(int(height * s + 1), int(width * s + 1)) for s in own]
  sizes += [(0, 0)] * (len(plan) - len(own))
  windows = np.zeros((len(plan), 2, 2, max((max(p[1:]) for p in plan), default=1)), np.int32)
  windows[:, :, 1] = 1
  for level, sides in enumerate(sizes):
    for axis, (side, level_side) in enumerate(zip((height, width), sides)):
      windows[level, axis, :, :level_side] = area_windows(side, level_side)
  return _Levels(shape, plan, *jax.device_put(
      (np.int32(sizes).reshape(-1, 2), windows, pyramid.cell_grid(plan))))


# --- The cascade on the device: params are an argument, so one compile serves every Detector.
# Each stage keeps a fixed number of box slots per image, those in use first. ---

@jax.jit
def _pnet(params, images, valid):
  reg, prob = mtcnn.PNet().apply({'params': params}, images, valid)
  return prob[..., 1], reg


def _padded(x, axis, size, value=0):
  """x padded with `value` to `size` along `axis`."""
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def _on_cpu():
  """Whether XLA runs on the CPU, where batches that stay in cache go faster."""
  return jax.default_backend() == 'cpu'


def _in_groups(f, size, *xs):
  """f(*xs) on xs (B, ...) in groups of `size` images (a power of two), one after another."""
  if size >= len(xs[0]):
    return f(*xs)
  out = lax.map(lambda group: f(*group), [x.reshape(-1, size, *x.shape[1:]) for x in xs])
  return jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:]), out)


@functools.partial(jax.jit, static_argnames='plan')
def _pnet_stage(params, images, num_real, sizes, windows, threshold, plan):
  """Stage 1a: the pyramid's levels of the first num_real images, P-Net on each. Returns their
  summed-area tables, flattened to (T, 3) (the crops are cut from them later); each image's
  P-Net cells of all levels in a row, (B, N, 5): face probability (-1 outside the image and
  its levels) and regression; and how many pass the threshold."""
  table = summed_area(images)
  num = images.shape[0]
  real = jnp.arange(num) < num_real
  cells = []
  for (_, h, w), size, window in zip(plan, sizes, windows):
    level = normalize(_shared_area_resize(table, window[0, :, :h], window[1, :, :w]))
    group = 1 << (max(1, CPU_PNET_PIXELS // (h * w)).bit_length() - 1) if _on_cpu() else num
    prob, reg = _in_groups(functools.partial(_pnet, params), group, level,
                           jnp.broadcast_to(size, (num, 2)))
    rows, cols = (jnp.arange(n) < pyramid.pnet_cells(s)
                  for n, s in zip(prob.shape[1:], size))
    prob = jnp.where(rows[:, None] & cols & real[:, None, None], prob, -1.0)
    cells.append(jnp.concatenate([prob[..., None], reg], axis=-1).reshape(num, -1, 5))
  cells = jnp.concatenate(cells, axis=1)
  cells = _padded(cells, 1, pyramid.bucket(cells.shape[1], 1), -1.0)
  corners = table.reshape(-1, 3)
  return (_padded(corners, 0, pyramid.bucket(len(corners), 1)), cells,
          (cells[..., 0] >= threshold).sum(1))


@functools.partial(jax.jit, static_argnames='slots')
def _propose(cells, grid, threshold, slots):
  """Stage 1b: the passing cells as boxes, NMS per image and level (IoU 0.5), then per image
  over all levels (IoU 0.7), regressed, squared. Returns (B, slots, 5): x1, y1, x2, y2, score,
  those kept first in the cells' order; and their counts."""
  index, count = boxes_lib.first(cells[..., 0] >= threshold, slots)
  cells, (x, y, scale, level) = boxes_lib.take(cells, index), jnp.moveaxis(grid[index], -1, 0)
  xy = jnp.stack([x, y], axis=-1)
  box = jnp.floor(boxes_lib.quotient(jnp.concatenate([2 * xy + 1, 2 * xy + 12], axis=-1),
                                     scale[..., None]))
  score, reg = cells[..., 0], cells[..., 1:]
  # Slots are in the cells' order, by level. facenet-pytorch takes each level by descending
  # score, ties in cell order, and then what the levels kept by descending score, ties in
  # level order: both are -score's order, ties in slot order.
  keep = boxes_lib.nms(box, [-score], 0.5, boxes_lib.in_use(count, slots), group=level)
  keep = boxes_lib.nms(box, [-score], 0.7, keep)
  count, (box, score, reg) = boxes_lib.compact(keep, box, score, reg)
  box = boxes_lib.rerec(boxes_lib.regress(box, reg, 0))
  return jnp.concatenate([box, score[..., None]], axis=-1), count


def _through_network(net, params, corners, frame, found, count, crops):
  """`net` on the crops of each image's boxes in use, area-resized and normalised as
  detect_face does, all images' crops in batches of up to `crops`. frame: the images' (height,
  width) and their tables'. Returns its outputs side by side in the boxes' slots, (B, K, F),
  and which slots had a crop."""
  num, slots = found.shape[:2]
  y, ey, x, ex = boxes_lib.crop_bounds(found[..., :4], frame[0], frame[1])
  # detect_face skips empty crops (boxes wholly outside the image) but keeps their boxes,
  # which misaligns boxes and scores; such boxes are dropped here.
  ok = boxes_lib.in_use(count, slots) & (ey > y) & (ex > x)
  (index,), (total,) = boxes_lib.first(ok.reshape(1, -1), crops)
  used = jnp.arange(crops) < total
  # Unused crops read one pixel: no division by zero.
  y, x, h, w = (jnp.where(used, a.reshape(-1)[index], unused)
                for a, unused in ((y, 0), (x, 0), (ey - y, 1), (ex - x, 1)))
  module, px = mtcnn.NETWORKS[net]

  def run(crop):
    pixels = _crop_area_resize(corners, frame[2], frame[3], index[crop] // slots,
                               area_windows(h[crop], px, y[crop]),
                               area_windows(w[crop], px, x[crop]))
    return jnp.concatenate(module().apply({'params': params}, normalize(pixels)), axis=-1)
  # Only the batches that hold crops run, so little beyond the crops is computed.
  batch = min(crops, CPU_CROPS[net]) if _on_cpu() else crops
  width = jax.eval_shape(run, jnp.zeros(batch, jnp.int32)).shape[-1]
  out = lax.fori_loop(0, -(-total // batch), lambda i, out: lax.dynamic_update_slice(
      out, run(i * batch + jnp.arange(batch)), (i * batch, 0)), jnp.zeros((crops, width)))
  target = jnp.where(used, index, num * slots)  # Unused crops are dropped.
  return (jnp.zeros((num * slots, width)).at[target].set(out, mode='drop')
          .reshape(num, slots, width)), ok


@functools.partial(jax.jit, static_argnames='crops')
def _rnet_stage(params, corners, frame, found, count, threshold, crops):
  """Stage 2: R-Net keeps probable faces; NMS per image (IoU 0.7), regression, squared. Returns
  (B, K, 6): box, R-Net's probability, P-Net's; and the counts."""
  out, ok = _through_network('rnet', params, corners, frame, found, count, crops)
  reg, prob, box, score = out[..., :4], out[..., 5], found[..., :4], found[..., 4]
  # facenet-pytorch's order here: R-Net's probability descending, ties in stage 1's order.
  keep = boxes_lib.nms(box, [-prob, -score], 0.7, ok & (prob > threshold))
  count, (box, prob, score, reg) = boxes_lib.compact(keep, box, prob, score, reg)
  box = boxes_lib.rerec(boxes_lib.regress(box, reg, 1))
  return jnp.concatenate([box, prob[..., None], score[..., None]], axis=-1), count


@functools.partial(jax.jit, static_argnames='crops')
def _onet_stage(params, corners, frame, found, count, threshold, crops):
  """Stage 3: O-Net keeps faces and places landmarks; regression. Returns (B, K, 17): box,
  O-Net's probability, 5 landmarks (x, y), R-Net's and P-Net's probabilities; the counts."""
  out, ok = _through_network('onet', params, corners, frame, found, count, crops)
  reg, points, prob, box = out[..., :4], out[..., 4:14], out[..., 15], found[..., :4]
  # Landmarks are relative to the box O-Net saw, before its regression.
  w = (box[..., 2] - box[..., 0] + 1)[..., None]
  h = (box[..., 3] - box[..., 1] + 1)[..., None]
  landmarks = jnp.stack([boxes_lib.product(w, points[..., :5]) + box[..., 0:1] - 1,
                         boxes_lib.product(h, points[..., 5:]) + box[..., 1:2] - 1], axis=-1)
  out = jnp.concatenate([boxes_lib.regress(box, reg, 1), prob[..., None],
                         landmarks.reshape(*prob.shape, 10), found[..., 4:6]], axis=-1)
  count, (out,) = boxes_lib.compact(ok & (prob > threshold), out)
  return out, count


class Detector:
  """MTCNN with converted weights; `detect` finds the faces in uint8 RGB images.

  The defaults are facenet-pytorch MTCNN's (and the MTCNN paper's).
  """

  def __init__(self, params, weights_metadata=None, min_face_size=20, thresholds=(0.6, 0.7, 0.7),
               factor=0.709):
    self.params = jax.device_put(params)
    self.id = detector_id(weights_metadata or {})  # Names what cached landmarks were found by.
    self.min_face_size = min_face_size
    self.thresholds = tuple(thresholds)
    self.factor = factor

  def detect(self, images):
    """Faces per image: `images` is a list of uint8 (H, W, 3) RGB arrays (sizes may differ) or
    one uint8 (B, H, W, 3) array. Images of one size go through the networks together."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
      images = list(images)
    groups = {}
    for i, image in enumerate(images):
      image = np.asarray(image)
      if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f'Image {i} is {image.dtype} {image.shape}; expected uint8 RGB '
                         f'(H, W, 3).')
      groups.setdefault(image.shape, []).append(i)
    faces = [no_faces()] * len(images)
    for (height, width, _), indices in groups.items():
      # A power of two per call, so full calls and the last one share compiled shapes.
      fits = min(256, max(1, MAX_PYRAMID_PIXELS // (height * width)))
      per_call = 1 << (fits.bit_length() - 1)
      for start in range(0, len(indices), per_call):
        chunk = indices[start:start + per_call]
        found = self._detect_same_size(np.stack([np.asarray(images[i]) for i in chunk]))
        for i, f in zip(chunk, found):
          faces[i] = f
    return faces

  def _detect_same_size(self, images):
    """The cascade on images of one size. Between stages the host reads the counts, to size the
    next stage: slots per image and crops per batch, in powers of two."""
    num, height, width = images.shape[:3]
    levels = _levels(height, width, self.min_face_size, self.factor)
    nothing = [no_faces() for _ in range(num)]
    if not levels.plan:
      return nothing
    batch = np.zeros((pyramid.bucket(num, 1), *levels.shape, 3), np.uint8)
    batch[:num, :height, :width] = images
    thresholds = np.float32(self.thresholds)
    corners, cells, count = _pnet_stage(self.params['pnet'], batch, num, levels.sizes,
                                        levels.windows, thresholds[0], levels.plan)
    count = np.asarray(count)
    if not count.any():
      return nothing
    found, count = _propose(cells, levels.grid, thresholds[0],
                            pyramid.bucket(int(count.max()), 1, 64))
    frame = np.int32([height, width, levels.shape[0] + 1, levels.shape[1] + 1])
    for stage, net, threshold, smallest in ((_rnet_stage, 'rnet', thresholds[1], 16),
                                            (_onet_stage, 'onet', thresholds[2], 8)):
      found, count = np.asarray(found), np.asarray(count)
      if not count.any():
        return nothing
      slots = pyramid.bucket(int(count.max()), 1, smallest)
      found, count = stage(self.params[net], corners, frame, found[:, :slots], count, threshold,
                           pyramid.bucket(int(count.sum()), 1, smallest))
    found, count = np.asarray(found), np.asarray(count)
    return [_faces(f[:n]) for f, n in zip(found[:num], count[:num])]


def _faces(found):
  """An image's Faces from O-Net's boxes (rows of _onet_stage): in facenet-pytorch's order
  (R-Net's probability, then P-Net's, descending), 'Min' NMS, best first."""
  found = found[np.lexsort((np.arange(len(found)), -found[:, 16], -found[:, 15]))]
  box, score = found[:, :4], found[:, 4]
  keep = nms_min(box, score, 0.7)
  keep = keep[np.argsort(-score[keep], kind='stable')]  # Already so; ties stay in NMS order.
  return Faces(box[keep], score[keep], found[keep, 5:15].reshape(-1, 5, 2))


def load_detector(weights_dir, **options):
  """A Detector on the converted weights in `weights_dir`; `options` as Detector's."""
  return Detector(*mtcnn.load_params(weights_dir), **options)
