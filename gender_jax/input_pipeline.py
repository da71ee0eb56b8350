"""Face images as numpy batches: the study's protocol, decoded and resized once, augmented per epoch.

`load_splits` builds (or reuses) the TFDS dataset of a face folder, draws the protocol (a seeded,
stratified subsample per split) and reads the drawn images as the model's inputs, made once and
cached beside the dataset (gender_jax/decoded.py). `train_batches` and `eval_batches` cut the
arrays into global batches and hand each process its slice, so a batch's content never depends on
the number of hosts.

Run as a script to build a folder's dataset and print what it holds and what the protocol draws:
  python -m gender_jax.input_pipeline --data_dir PATH [--tfds_dir D] [--workdir W]
"""
import dataclasses
import os
from typing import NamedTuple

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import tqdm

from gender_jax import LABELS
from gender_jax import base_config
from gender_jax import cli
from gender_jax import config_check
from gender_jax import decoded
from gender_jax import face_dataset
from gender_jax import faces
from gender_jax import record_files
from gender_jax import run_dir

SPLITS = face_dataset.SPLITS
# A flat {male,female} folder is cut per class into these shares of train/valid/test pools.
FLAT_FRACTIONS = {'train': 0.8, 'valid': 0.1, 'test': 0.1}


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
  records: 'decoded.Records | None' = None  # Where its images are cached, for derived caches.

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


# ---------------------------------------------------------------------------------------------
# The protocol.


def _stratified(labels, n, rng):
  """Picks n positions of `labels`, each class in proportion to its share (largest remainder)."""
  counts = np.bincount(labels, minlength=len(LABELS))
  quota = n * counts / counts.sum()
  take = np.floor(quota).astype(int)
  take[np.argsort(take - quota, kind='stable')[:n - take.sum()]] += 1
  picks = [rng.choice(np.flatnonzero(labels == c), take[c], replace=False, shuffle=False)
           for c in range(len(LABELS))]
  return np.sort(np.concatenate(picks))


def _flat_pools(labels, seed):
  """Cuts a flat folder's records per class into train/valid/test pools (FLAT_FRACTIONS)."""
  rng = np.random.default_rng([seed, len(SPLITS)])
  pools = {s: [] for s in SPLITS}
  for c in range(len(LABELS)):
    members = rng.permutation(np.flatnonzero(labels == c))
    num_valid = round(FLAT_FRACTIONS['valid'] * len(members))
    num_test = round(FLAT_FRACTIONS['test'] * len(members))
    pools['valid'].append(members[:num_valid])
    pools['test'].append(members[num_valid:num_valid + num_test])
    pools['train'].append(members[num_valid + num_test:])
  return {s: np.sort(np.concatenate(p)) for s, p in pools.items()}


class Drawn(NamedTuple):
  """One split of the protocol: the TFDS split it comes from, its pool and the rows drawn."""
  source: str
  pool: np.ndarray  # Record rows it could draw from, in path order.
  rows: np.ndarray  # Record rows drawn, in path order.


def draw_protocol(index, sizes, seed):
  """Draws sizes[split] records (-1: all) per split, stratified by class, with numpy's seeded PCG64.

  index: TFDS split -> (paths, labels), for SPLITS or a flat folder's UNSPLIT; returns split ->
  Drawn. Records are sorted by path first, so a folder and seed give the same files on any
  machine (numpy promises its Generator streams within a release, not across releases).
  """
  if face_dataset.UNSPLIT in index:
    paths, labels = index[face_dataset.UNSPLIT]
    order = np.argsort(paths, kind='stable')
    pools = {s: (face_dataset.UNSPLIT, order[p])
             for s, p in _flat_pools(labels[order], seed).items()}
  else:
    pools = {s: (s, np.argsort(index[s][0], kind='stable')) for s in index}
  drawn = {}
  for split, n in sizes.items():
    if split not in pools:
      raise face_dataset.FolderError(
          f'The face folder has no {split} split folder (it has {sorted(index)}); accepted '
          f'names: {"/".join(face_dataset.SPLIT_NAMES[split])}, any case.')
    source, pool = pools[split]
    labels = index[source][1][pool]
    if n > len(pool) or n < -1:
      counts = ', '.join(f'{_count(labels, c)} {name}' for c, name in enumerate(LABELS))
      raise face_dataset.FolderError(
          f'Asked for {n} {split} images but the folder has {len(pool)} ({counts}); ask for at '
          'most that many, or -1 for all.')
    if n in (-1, len(pool)):
      rows = pool
    else:
      rows = pool[_stratified(labels, n, np.random.default_rng([seed, SPLITS.index(split)]))]
    drawn[split] = Drawn(source, pool, rows)
  return drawn


def _count(labels, c):
  return int(np.sum(labels == c))


def _write_file_list(workdir, name, paths, labels):
  """Writes workdir/protocol/<name>.txt (path, tab, label), or checks the run's own list."""
  text = ''.join(f'{p}\t{l}\n' for p, l in zip(paths, labels))
  run_dir.check_protocol_file(workdir, name, text)


def _summary(builder, index, drawn):
  """Table lines: files, bad files, usable (or pool) and drawn examples per split and class."""
  meta = builder.info.metadata
  rows = []  # (split, class, files, bad, usable, drawn); '-' where it does not apply.
  for source, files in meta['num_files'].items():
    for c, name in enumerate(LABELS):
      usable = meta['num_examples'][source][c]
      taken = _count(index[source][1][drawn[source].rows], c) if source in drawn else '-'
      rows.append((source, name, files[c], files[c] - usable, usable, taken))
  totals = [sum(r[i] for r in rows) for i in (2, 3, 4)]
  if meta['layout'] == 'flat':  # Pools cut from the one folder; its files are counted above.
    for split, (source, pool, picked) in drawn.items():
      labels = index[source][1]
      for c, name in enumerate(LABELS):
        rows.append((split, name, '-', '-', _count(labels[pool], c), _count(labels[picked], c)))
  rows.append(('total', '', *totals, sum(len(d.rows) for d in drawn.values())))
  return [f'Face folder {meta["source_dir"]} ({meta["layout"]} layout)',
          f'Dataset {builder.data_dir}',
          f'{"split":10}{"class":8}{"files":>8}{"bad":>6}{"usable":>8}{"drawn":>8}',
          *(f'{s:10}{c:8}{f:>8}{b:>6}{u:>8}{d:>8}' for s, c, f, b, u, d in rows),
          f'{len(meta["bad_files"])} bad files left out (listed in '
          f'{face_dataset.report_path(builder)}); {meta.get("num_skipped", 0)} skipped as not '
          f'images by name' + (f' ({", ".join(meta["skipped_files"][:3])}, ...)'
                               if meta.get('skipped_files') else '')]


def load_detector(config):
  """(detector, its decoded.detector_id for cache names) when config.face_align finds faces.

  (None, None) for 'none'. Raises pretrained.MissingWeightsError, with the command that makes
  them, when config.face_detector_weights holds no converted MTCNN.
  """
  if config.face_align == 'none':
    return None, None
  from gender_jax import face_detect  # pylint: disable=g-import-not-at-top
  params, metadata = face_detect.load_params(config.face_detector_weights)
  return face_detect.Detector(params), decoded.detector_id(metadata)


def set_face_template(config, train_marks):
  """Fills an empty config.face_template from the training faces, so the run records it."""
  if config.face_align == 'none' or len(config.face_template):
    return
  if train_marks is None:
    raise ValueError('config.face_template is empty and no train split is loaded to derive it '
                     f'from; give the run\'s template (its {run_dir.CONFIG} has it).')
  found = train_marks.found
  template = faces.derive_template(train_marks.points[found], train_marks.sizes[found],
                                   config.resize, config.face_zoom)
  config.face_template = tuple(round(float(v), 6) for v in template.ravel())


def _load(config, workdir, splits):
  """load_splits, also returning the summary table's lines."""
  builder = face_dataset.build(config.data_dir, config.tfds_dir, config.max_bad_fraction)
  index = {s: face_dataset.read_index(builder, s) for s in builder.info.splits}
  drawn = draw_protocol(index, {s: int(config[f'num_{s}']) for s in splits}, config.seed)
  if workdir:  # Checked before decoding, which is the slow part.
    for name, (source, _, rows) in drawn.items():
      _write_file_list(workdir, name, [index[source][0][r] for r in rows], index[source][1][rows])
  detector, detector_id = load_detector(config)
  marks = {}
  if detector:
    marks = {name: decoded.cached_landmarks(builder, source, rows, detector, detector_id)
             for name, (source, _, rows) in drawn.items()}
    set_face_template(config, marks['train'].take(drawn['train'].rows)
                      if 'train' in marks else None)
  loaded, face_lines = {}, []
  for name, (source, _, rows) in drawn.items():
    paths, labels = index[source]
    images, records = decoded.cached_images(builder, source, rows, config, detector_id,
                                            marks.get(name))
    split = Split(name=name, images=images, labels=labels[rows], paths=[paths[r] for r in rows],
                  source_dir=builder.info.metadata['source_dir'], records=records)
    if marks:
      found = marks[name].found[rows]
      if workdir:
        _write_file_list(workdir, f'no_face_{name}', [paths[r] for r in rows[~found]],
                         labels[rows[~found]])
      split = _missing_faces(split, found, config.face_missing)
      face_lines.append(_face_line(split, len(rows), config.face_missing))
    loaded[name] = split
  return loaded, _summary(builder, index, drawn) + face_lines


def _missing_faces(split, found, how):
  """Records the images without a face; 'drop' leaves them out, 'resize' keeps them resized."""
  split.no_face = [p for p, f in zip(split.paths, found) if not f]
  if how == 'drop':
    split.images, split.labels = split.images.subset(found), split.labels[found]
    split.paths = [p for p, f in zip(split.paths, found) if f]
    if split.records:
      split.records = split.records._replace(rows=split.records.rows[found])
  return split


def _face_line(split, drawn, how):
  missing = len(split.no_face)
  what = 'left out' if how == 'drop' else 'resized whole'
  return (f'{split.name}: a face found in {drawn - missing} of {drawn} images'
          + (f'; {missing} without one {what} ({", ".join(split.no_face[:3])}'
             f'{", ..." if missing > 3 else ""})' if missing else ''))


def load_splits(config, workdir=None, splits=SPLITS):
  """Loads the protocol's splits of config.data_dir as the model's inputs (config.image_size).

  Builds or reuses the folder's TFDS dataset under config.tfds_dir, draws num_train/num_valid/
  num_test with config.seed, and writes workdir/protocol/<split>.txt when workdir is given. With
  face alignment, fills an empty config.face_template from the training faces.
  """
  loaded, table = _load(config, workdir, splits)
  if jax.process_index() == 0:
    for line in table:
      tqdm.tqdm.write(line)
  return loaded


def load_folder(path, config, detector=None, max_bad_fraction=0.01):
  """Loads every image of a labelled folder (any accepted layout) without building a dataset.

  Images become the model's inputs as config says (resized, or their face aligned by
  `detector`). Undecodable files are left out, logged and listed in the Split's bad_files; more
  than max_bad_fraction of them is an error.
  """
  scan = face_dataset.scan_folder(path)
  examples = sorted(e for v in scan.examples.values() for e in v)
  images, found, bad = decoded.folder_images(scan.root, [rel for rel, _ in examples], config,
                                             detector)
  bad_files = [(examples[k][0], reason) for k, reason in bad]
  for rel, reason in bad_files:
    logging.warning('Left out %s: %s', os.path.join(scan.root, rel), reason)
  if len(bad) > max_bad_fraction * len(examples):
    raise face_dataset.FolderError(
        f'{len(bad)} of {len(examples)} files in {scan.root} could not be decoded, more than '
        f'max_bad_fraction={max_bad_fraction}: ' + '; '.join(f'{p}: {r}' for p, r in bad_files[:10]))
  keep = np.setdiff1d(np.arange(len(examples)), [k for k, _ in bad])
  split = Split(
      name=os.path.basename(scan.root),
      images=images[keep],
      labels=np.asarray([examples[k][1] for k in keep], np.int32),
      paths=[examples[k][0] for k in keep],
      source_dir=scan.root,
      bad_files=bad_files)
  if detector:
    split = _missing_faces(split, found[keep], config.face_missing)
    logging.info('%s', _face_line(split, len(keep), config.face_missing))
  return split


# ---------------------------------------------------------------------------------------------
# Batches.


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


def num_train_steps(split, batch_size):
  """Training steps per epoch: full global batches only."""
  return len(split) // batch_size


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
    out[i] = faces.warp_affine(images[i], matrix, size)
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
      images = augment(split.images[index], flips[rows], shifts[rows])
      if jitter.geometric:
        images = jitter_geometry(images, factors[rows])
      if any(jitter.frame):
        images = jitter_frame(images, factors[rows])
      if jitter.photometric:
        images = jitter_colour(images, factors[rows])
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


# ---------------------------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS


def define_flags():
  """Defines the command line flags; only when run as a script, so imports never clash. Each
  flag but --workdir sets the config field of its name."""
  flags.DEFINE_string('data_dir', None, 'Face folder (default: the config\'s, GENDER_JAX_DATA).')
  flags.DEFINE_string('tfds_dir', None, 'Where the dataset is built (default: the config\'s).')
  flags.DEFINE_integer('num_train', None, 'Train images drawn (-1: all).')
  flags.DEFINE_integer('num_valid', None, 'Validation images drawn (-1: all).')
  flags.DEFINE_integer('num_test', None, 'Test images drawn (-1: all).')
  flags.DEFINE_integer('seed', None, 'Protocol seed.')
  flags.DEFINE_integer('image_size', None, 'Side of the square images, in pixels.')
  flags.DEFINE_enum('resize', None, faces.RESIZES, 'How faces become squares.')
  flags.DEFINE_float('max_bad_fraction', None, 'Fail if more files than this are undecodable.')
  flags.DEFINE_string('workdir', None, 'Write the protocol file lists to WORKDIR/protocol/.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = base_config.get_config()
  for name in config:
    if name in FLAGS and FLAGS[name].value is not None:
      config[name] = FLAGS[name].value
  config_check.check(config)
  _, table = _load(config, FLAGS.workdir, SPLITS)
  print('\n'.join(table))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
