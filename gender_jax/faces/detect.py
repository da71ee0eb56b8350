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

The networks run jitted, in small batches that stay in cache, on a bounded set of shapes
(P-Net levels padded to size buckets or cut into tiles; crop batches in powers of two).
Everything between them (pyramid, crops, NMS, box arithmetic) is numpy, per image: an image's
faces do not depend on the other images in the batch (facenet-pytorch offsets each image's
boxes by a float32 multiple of its index for NMS, which does).

Equal up to float32 rounding: the networks' sums differ from torch's in the last bits, which
moves nothing, except where a box edge lands within that of an integer (a crop bound truncates
to the other side) and near-tied candidates then swap. On 2,000 CelebA crops and 2,000 UTKFace
chips, one chip's box differed by more than 1 px (a different candidate of the same face).
"""
import hashlib
import json
from typing import NamedTuple

import jax
import numpy as np

from gender_jax.faces import mtcnn

# Batch sizes per network call. On CPU, small batches whose activations stay in cache are
# faster per image than large ones.
CROP_BATCH = {'rnet': 64, 'onet': 32}  # Crops per call; the rest goes in powers of two >= 8.
PNET_CALL_PIXELS = 1 << 16  # Input pixels per P-Net call (images or tiles x height x width).
PNET_TILE = 64  # Levels larger than this many P-Net cells a side run in tiles of this many.
MAX_PYRAMID_PIXELS = 1 << 22  # Image pixels per pyramid pass: bounds host memory.
# The face finding that cached landmarks come from: bump it with any change to gender_jax/faces/
# or to how input_cache.cached_landmarks batches images that moves a landmark, so caches made
# before are not reused. Version 3: each record's image found alone.
FACE_FINDING_VERSION = 3


def detector_id(weights_metadata):
  """An id of the MTCNN weights (their metadata) and of FACE_FINDING_VERSION, for cache names:
  cached landmarks and the faces aligned with them are named by it."""
  key = {'weights': weights_metadata.get('pt_sha256'), 'version': FACE_FINDING_VERSION}
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


# --- The cascade's numpy steps: each as facenet-pytorch computes it, in float32. ---

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


def pyramid_scales(height, width, min_face_size=20, factor=0.709):
  """P-Net's scales: a min_face_size face becomes 12 px, then x factor while the short side
  stays >= 12 px (Python floats, as detect_face, so the level sizes are the same)."""
  scale = 12.0 / min_face_size
  short = min(height, width) * scale
  scales = []
  while short >= 12:
    scales.append(scale)
    scale *= factor
    short *= factor
  return scales


def area_windows(size_in, size_out, start=0):
  """torch's adaptive average pooling windows: [floor(i n / m), ceil((i + 1) n / m)), i < m.

  `size_in` and `start` may be arrays (one crop each): then (K, m) arrays, offset by `start`.
  """
  size_in, start = np.asarray(size_in)[..., None], np.asarray(start)[..., None]
  i = np.arange(size_out)
  return start + i * size_in // size_out, start - (-(i + 1) * size_in // size_out)


def summed_area(images):
  """(B, H + 1, W + 1, 3) uint32 summed-area tables of uint8 images.

  Sums wrap modulo 2^32, but the difference of four entries, a window's sum, is exact as long
  as the true sum fits: any window under 16 million pixels.
  """
  b, h, w, c = images.shape
  table = np.zeros((b, h + 1, w + 1, c), np.uint32)
  np.cumsum(images, axis=1, dtype=np.uint32, out=table[:, 1:, 1:])
  np.cumsum(table[:, 1:, 1:], axis=2, dtype=np.uint32, out=table[:, 1:, 1:])
  return table


def area_resize(table, index, rows, cols):
  """torch.nn.functional.interpolate(mode='area') from summed-area tables, bit for bit: exact
  window sums, divided by the window height and then its width in float32, as torch does.

  table[index] are the images; rows/cols are (start, end) windows from `area_windows`, either
  (m,) for all images or (K, m) for one crop per index. Returns float32 (K, rows, cols, 3).
  """
  (r0, r1), (c0, c1) = rows, cols
  index = np.asarray(index)
  if r0.ndim == 1:  # Shared windows: gather rows, then columns (cheaper than all at once).
    band = table[index][:, r1] - table[index][:, r0]
    sums = band[:, :, c1] - band[:, :, c0]
    r0, r1, c0, c1 = r0[None, :, None], r1[None, :, None], c0[None, None], c1[None, None]
  else:  # One index into the flattened table per corner: 1.2-1.3x faster than three arrays.
    _, height, width, channels = table.shape
    corners = table.reshape(-1, channels)
    top, bottom = ((index.astype(np.int64)[:, None, None] * height + r[:, :, None]) * width
                   for r in (r0, r1))
    left, right = c0[:, None, :], c1[:, None, :]
    sums = (corners[bottom + right] - corners[top + right] - corners[bottom + left]
            + corners[top + left])
    r0, r1, c0, c1 = r0[:, :, None], r1[:, :, None], left, right
  return (sums.astype(np.float32) / (r1 - r0)[..., None].astype(np.float32)
          / (c1 - c0)[..., None].astype(np.float32))


def normalize(pixels):
  """MTCNN's input scaling, in float32 as detect_face: (x - 127.5) / 128."""
  return (pixels - np.float32(127.5)) * np.float32(0.0078125)


def nms(boxes, scores, threshold):
  """torchvision.ops.nms on CPU: indices kept, highest score first (stable sort, so ties keep
  input order); a box goes when its IoU (areas without +1) with a kept one is > threshold."""
  x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
  areas = (x2 - x1) * (y2 - y1)
  order = np.argsort(-scores, kind='stable')
  keep = []
  while order.size:
    i, order = order[0], order[1:]
    keep.append(i)
    w = np.maximum(np.float32(0), np.minimum(x2[i], x2[order]) - np.maximum(x1[i], x1[order]))
    h = np.maximum(np.float32(0), np.minimum(y2[i], y2[order]) - np.maximum(y1[i], y1[order]))
    inter = w * h
    iou = inter / (areas[i] + areas[order] - inter)
    order = order[~(iou.astype(np.float64) > threshold)]  # torchvision compares in double.
  return np.array(keep, np.int64)


def nms_min(boxes, scores, threshold):
  """facenet-pytorch's nms_numpy(method='Min'), O-Net's last step: areas with +1, overlap over
  the smaller box, kept while <= threshold; numpy's own argsort, so ties break as there."""
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


def bbreg(boxes, reg):
  """Applies R-/O-Net box regression (offsets in units of the box size, +1 as MATLAB)."""
  w = boxes[:, 2] - boxes[:, 0] + 1
  h = boxes[:, 3] - boxes[:, 1] + 1
  out = boxes.copy()
  out[:, :4] = boxes[:, :4] + reg * np.stack([w, h, w, h], axis=1)
  return out


def rerec(boxes):
  """Squares boxes around their centre on the longer side."""
  h = boxes[:, 3] - boxes[:, 1]
  w = boxes[:, 2] - boxes[:, 0]
  side = np.maximum(w, h)
  out = boxes.copy()
  out[:, 0] = boxes[:, 0] + w * np.float32(0.5) - side * np.float32(0.5)
  out[:, 1] = boxes[:, 1] + h * np.float32(0.5) - side * np.float32(0.5)
  out[:, 2:4] = out[:, :2] + side[:, None]
  return out


def pad(boxes, width, height):
  """detect_face's crop bounds: 1-based (y, ey, x, ex), truncated and clipped to the image."""
  b = np.trunc(boxes[:, :4]).astype(np.int32)
  return (np.maximum(b[:, 1], 1), np.minimum(b[:, 3], height),
          np.maximum(b[:, 0], 1), np.minimum(b[:, 2], width))


def _per_image(image, num_images):
  """Slices of each image's rows in arrays sorted by image."""
  bounds = np.searchsorted(image, np.arange(num_images + 1))
  return [slice(bounds[i], bounds[i + 1]) for i in range(num_images)]


def pnet_cells(size):
  """P-Net's output cells along an input side of `size` px (conv 3, ceil-mode pool 2, conv 3,
  conv 3)."""
  return -(-(size - 2) // 2) - 4


def _size_bucket(n):
  """Rounds a P-Net input side up to one of 8 sizes per octave (at most 1/8 more), so levels
  of any photo share a bounded set of compiled shapes."""
  step = max(4, 1 << max(0, n.bit_length() - 4))
  return -(-n // step) * step


def _batches(total, largest, smallest=1):
  """(start, count, padded count) per network call: calls of `largest` (a power of two), then
  the rest in decreasing powers of two, the last padded up to `smallest`. Only powers of two
  get compiled, and little is padded."""
  calls = [(start, largest, largest) for start in range(0, total - largest + 1, largest)]
  start = len(calls) * largest
  for bit in reversed(range((total - start).bit_length())):
    count = 1 << bit
    if start == total:
      break
    if count < smallest:
      calls.append((start, total - start, smallest))
      break
    if (total - start) & count:
      calls.append((start, count, count))
      start += count
  return calls


# --- Jitted networks: params are an argument, so one compile serves every Detector. ---

@jax.jit
def _pnet(params, images, valid):
  reg, prob = mtcnn.PNet().apply({'params': params}, images, valid)
  return prob[..., 1], reg


@jax.jit
def _rnet(params, crops):
  reg, prob = mtcnn.RNet().apply({'params': params}, crops)
  return prob[:, 1], reg


@jax.jit
def _onet(params, crops):
  reg, points, prob = mtcnn.ONet().apply({'params': params}, crops)
  return prob[:, 1], reg, points


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
      per_call = int(min(256, max(1, MAX_PYRAMID_PIXELS // (height * width))))
      for start in range(0, len(indices), per_call):
        chunk = indices[start:start + per_call]
        found = self._detect_same_size(np.stack([np.asarray(images[i]) for i in chunk]))
        for i, f in zip(chunk, found):
          faces[i] = f
    return faces

  def _detect_same_size(self, images):
    num, height, width = images.shape[:3]
    table = summed_area(images)
    image, boxes = self._propose(table, height, width)
    image, boxes = self._refine(table, image, boxes, height, width)
    return self._output(table, image, boxes, height, width, num)

  def _pnet_level(self, level):
    """P-Net on a (B, h, w, 3) level: (prob (B, h', w'), reg (B, h', w', 4)); see
    `_dispatch_pnet`."""
    return self._dispatch_pnet(level)()

  def _dispatch_pnet(self, level):
    """Starts P-Net on a (B, h, w, 3) level; returns a function that waits for its result,
    (prob (B, h', w'), reg (B, h', w', 4)).

    A side longer than a tile is cut into tiles of PNET_TILE cells (2 * PNET_TILE + 10 px, the
    window of that many cells); a shorter one is padded to a size bucket. Tiles and images are
    one batch, each with its true size for P-Net's mask.
    """
    num, h, w = level.shape[:3]
    step, tile = 2 * PNET_TILE, 2 * PNET_TILE + 10
    tiles, sides = [], []
    for n in (h, w):
      count = 1 if n <= tile else -(-pnet_cells(n) // PNET_TILE)
      tiles.append(count)
      sides.append(min(_size_bucket(n), tile) if count == 1 else tile)
    (ty, tx), (th, tw) = tiles, sides
    padded = np.zeros((num, (ty - 1) * step + th, (tx - 1) * step + tw, 3), np.float32)
    padded[:, :h, :w] = level
    inputs = np.stack([padded[:, i * step:i * step + th, j * step:j * step + tw]
                       for i in range(ty) for j in range(tx)], axis=1).reshape(-1, th, tw, 3)
    valid = np.tile([[min(th, h - i * step), min(tw, w - j * step)]
                     for i in range(ty) for j in range(tx)], (num, 1)).astype(np.int32)
    largest = 1 << max(0, (PNET_CALL_PIXELS // (th * tw)).bit_length() - 1)
    outs = [_pnet(self.params['pnet'], inputs[start:start + n], valid[start:start + n])
            for start, n, _ in _batches(len(inputs), largest)]

    def result():
      ch, cw = pnet_cells(th), pnet_cells(tw)
      prob, reg = (np.concatenate([np.asarray(o[k]) for o in outs]) for k in (0, 1))
      prob = prob.reshape(num, ty, tx, ch, cw).transpose(0, 1, 3, 2, 4)
      reg = reg.reshape(num, ty, tx, ch, cw, 4).transpose(0, 1, 3, 2, 4, 5)
      oh, ow = pnet_cells(h), pnet_cells(w)
      return (prob.reshape(num, ty * ch, tx * cw)[:, :oh, :ow],
              reg.reshape(num, ty * ch, tx * cw, 4)[:, :oh, :ow])
    return result

  def _propose(self, table, height, width):
    """Stage 1: P-Net candidates per image, NMS per scale and over scales, regressed, squared.

    Returns (image index (n,), boxes (n, 5): x1, y1, x2, y2, score), sorted by image.
    """
    num = table.shape[0]
    scales = pyramid_scales(height, width, self.min_face_size, self.factor)
    # All levels start before any is read: XLA runs one while numpy resizes the next.
    pending = []
    for scale in scales:
      h, w = int(height * scale + 1), int(width * scale + 1)
      pending.append(self._dispatch_pnet(normalize(area_resize(
          table, np.arange(num), area_windows(height, h), area_windows(width, w)))))
    found = [[] for _ in range(num)]
    for scale, result in zip(scales, pending):
      prob, reg = result()
      image, y, x = np.nonzero(prob >= np.float32(self.thresholds[0]))
      cell = np.stack([x, y], axis=1).astype(np.float32)
      scale32 = np.float32(scale)
      candidates = np.concatenate([
          np.floor((2 * cell + 1) / scale32), np.floor((2 * cell + 12) / scale32),
          prob[image, y, x][:, None], reg[image, y, x]], axis=1)
      for i, rows in enumerate(_per_image(image, num)):
        if rows.stop > rows.start:
          c = candidates[rows]
          found[i].append(c[nms(c[:, :4], c[:, 4], 0.5)])
    images, boxes = [], []
    for i, per_scale in enumerate(found):
      if not per_scale:
        continue
      c = np.concatenate(per_scale)
      c = c[nms(c[:, :4], c[:, 4], 0.7)]
      w, h = c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]
      regressed = c[:, :4] + c[:, 5:9] * np.stack([w, h, w, h], axis=1)
      boxes.append(rerec(np.concatenate([regressed, c[:, 4:5]], axis=1)))
      images.append(np.full(len(c), i))
    if not boxes:
      return np.zeros((0,), np.int64), np.zeros((0, 5), np.float32)
    return np.concatenate(images), np.concatenate(boxes)

  def _crops(self, table, image, boxes, height, width, net):
    """The boxes' crops for `net`, resized (area) and normalised as detect_face does, one
    network call at a time: (kept mask, iterator of (count, crops padded to a power of two))."""
    size = mtcnn.NETWORKS[net][1]
    y, ey, x, ex = pad(boxes, width, height)
    # detect_face skips empty crops (boxes wholly outside the image) but keeps their boxes,
    # which misaligns boxes and scores; such boxes are dropped here.
    ok = (ey > y - 1) & (ex > x - 1)
    image, y, ey, x, ex = image[ok], y[ok] - 1, ey[ok], x[ok] - 1, ex[ok]

    def calls():
      for start, count, padded in _batches(len(image), CROP_BATCH[net], smallest=8):
        s = slice(start, start + count)
        crops = normalize(area_resize(table, image[s], area_windows(ey[s] - y[s], size, y[s]),
                                      area_windows(ex[s] - x[s], size, x[s])))
        yield count, np.pad(crops, ((0, padded - count), (0, 0), (0, 0), (0, 0)))
    return ok, calls()

  def _refine(self, table, image, boxes, height, width):
    """Stage 2: R-Net keeps probable faces; NMS per image, regression, squared."""
    ok, chunks = self._crops(table, image, boxes, height, width, 'rnet')
    image, boxes = image[ok], boxes[ok]
    # Dispatch every call before reading one: XLA runs a call while numpy makes the next crops.
    outs = [(n, _rnet(self.params['rnet'], crops)) for n, crops in chunks]
    if not outs:
      return image, boxes
    prob, reg = (np.concatenate([np.asarray(o[k])[:n] for n, o in outs]) for k in (0, 1))
    passed = prob > np.float32(self.thresholds[1])
    image, reg = image[passed], reg[passed]
    boxes = np.concatenate([boxes[passed, :4], prob[passed, None]], axis=1)
    keep = np.concatenate([rows.start + nms(boxes[rows, :4], boxes[rows, 4], 0.7)
                           for rows in _per_image(image, table.shape[0])] + [[]]).astype(int)
    return image[keep], rerec(bbreg(boxes[keep], reg[keep]))

  def _output(self, table, image, boxes, height, width, num):
    """Stage 3: O-Net keeps faces and places landmarks; regression, 'Min' NMS per image."""
    ok, chunks = self._crops(table, image, boxes, height, width, 'onet')
    image, boxes = image[ok], boxes[ok]
    outs = [(n, _onet(self.params['onet'], crops)) for n, crops in chunks]
    if not outs:
      return [no_faces() for _ in range(num)]
    prob, reg, points = (np.concatenate([np.asarray(o[k])[:n] for n, o in outs])
                         for k in (0, 1, 2))
    passed = prob > np.float32(self.thresholds[2])
    image, reg, points = image[passed], reg[passed], points[passed]
    boxes = np.concatenate([boxes[passed, :4], prob[passed, None]], axis=1)
    # Landmarks are relative to the box O-Net saw, before its regression.
    w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    landmarks = np.stack([w * points[:, :5] + boxes[:, 0:1] - 1,
                          h * points[:, 5:] + boxes[:, 1:2] - 1], axis=-1)
    boxes = bbreg(boxes, reg)
    faces = []
    for rows in _per_image(image, num):
      b, l = boxes[rows], landmarks[rows]
      keep = nms_min(b[:, :4], b[:, 4], 0.7)
      keep = keep[np.argsort(-b[keep, 4], kind='stable')]  # Already so; ties stay in NMS order.
      faces.append(Faces(b[keep, :4], b[keep, 4], l[keep]))
    return faces


def load_detector(weights_dir, **options):
  """A Detector on the converted weights in `weights_dir`; `options` as Detector's."""
  return Detector(*mtcnn.load_params(weights_dir), **options)
