"""Face images as numpy batches: the study's protocol, decoded and resized once, augmented per epoch.

`load_splits` builds (or reuses) the TFDS dataset of a face folder, draws the protocol (a seeded,
stratified subsample per split), decodes and resizes the drawn images in threads and caches them
as .npy beside the dataset. `train_batches` and `eval_batches` cut the arrays into global batches
and hand each process its slice, so a batch's content never depends on the number of hosts.

Run as a script to build a folder's dataset and print what it holds and what the protocol draws:
  python -m gender_jax.input_pipeline --data_dir PATH [--tfds_dir D] [--workdir W]
"""
import concurrent.futures
import dataclasses
import os
import sys
from typing import NamedTuple

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
from PIL import Image
import tqdm

from gender_jax import LABELS
from gender_jax import face_dataset

SPLITS = face_dataset.SPLITS
RESIZES = ('stretch', 'center_crop')
# Pillow's bilinear filter (it widens its support when shrinking, so downscaling is antialiased).
RESIZE_FILTER = Image.Resampling.BILINEAR
# A flat {male,female} folder is cut per class into these shares of train/valid/test pools.
FLAT_FRACTIONS = {'train': 0.8, 'valid': 0.1, 'test': 0.1}
_WINDOW = 4096  # Records decoded per round: bounds the encoded bytes held in memory at once.


@dataclasses.dataclass
class Split:
  """One split's examples in memory, in path order."""
  name: str
  images: np.ndarray  # uint8 (N, S, S, 3), RGB, resized to config.image_size.
  labels: np.ndarray  # int32 (N,), 0 female / 1 male.
  paths: list  # Paths relative to source_dir (for reports and file lists).
  source_dir: str
  bad_files: list = dataclasses.field(default_factory=list)  # (path, reason) left out.

  def __len__(self):
    return len(self.labels)


# ---------------------------------------------------------------------------------------------
# Decoding and resizing.


def resize_image(image, size, resize='stretch'):
  """Resizes an RGB Pillow image to a uint8 (size, size, 3) array: stretched or centre-cropped."""
  if resize == 'center_crop':
    # Cropped first: resize(box=...) would let the filter read pixels outside the square.
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
  elif resize != 'stretch':
    raise ValueError(f'Unknown resize {resize!r}; expected one of {RESIZES}.')
  return np.asarray(image.resize((size, size), RESIZE_FILTER))


def _decode_resize(read, rows, size, resize, out, progress):
  """Puts image k = decode(read(k)), resized, into out[rows[k]], in threads; ticks a tqdm bar.

  Pillow releases the GIL while resizing, so threads scale without copying pixels between
  processes. Returns [(k, reason)] of the files that could not be decoded.
  """
  def work(ks):
    bad = []
    for k in ks:
      try:
        out[rows[k]] = resize_image(face_dataset.decode_rgb(read(k)), size, resize)
      except face_dataset.BadImageError as e:
        bad.append((k, str(e)))
    return bad, len(ks)

  chunks = np.array_split(np.arange(len(rows)), max(1, len(rows) // 64))
  bad = []
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    for chunk_bad, n in pool.map(work, chunks):
      bad += chunk_bad
      progress.update(n)
  return bad


def _cached_images(builder, split, rows, size, resize):
  """The images of records `rows` of a built split, decoded once per (size, resize) into a .npy.

  The cache lives in the dataset's folder (named by the folder's fingerprint) and holds every
  record of the split, filled in as protocols ask for them, with a mask of the filled ones.
  """
  base = os.path.join(os.fspath(builder.data_dir), f'decoded-{split}-{size}px-{resize}')
  num_records = builder.info.splits[split].num_examples
  with face_dataset.locked(base + '.lock'):
    if os.path.exists(base + '.done.npy'):  # Saved last, so the images before it are whole.
      images = np.load(base + '.npy', mmap_mode='r+')
      done = np.load(base + '.done.npy')
    else:
      images = np.lib.format.open_memmap(base + '.npy', 'w+', np.uint8, (num_records, size, size, 3))
      done = np.zeros(num_records, bool)
    todo = rows[~done[rows]]
    if len(todo):
      records = builder.as_data_source(split)
      with tqdm.tqdm(total=len(todo), desc=f'Decoding {split} at {size}px', unit=' img') as bar:
        for start in range(0, len(todo), _WINDOW):
          window = todo[start:start + _WINDOW]
          blobs = [r['image'] for r in records.__getitems__(window.tolist())]
          if _decode_resize(blobs.__getitem__, window, size, resize, images, bar):
            # The build decoded every stored image, so the dataset itself is damaged.
            raise RuntimeError(f'Records of {builder.data_dir} no longer decode; delete that '
                               f'folder to rebuild it.')
      images.flush()
      done[todo] = True
      np.save(base + '.done.tmp.npy', done)
      os.replace(base + '.done.tmp.npy', base + '.done.npy')
    return np.asarray(images[rows])


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
      raise ValueError(f'Asked for {n} {split} images but the folder has {len(pool)} ({counts}); '
                       f'ask for at most that many, or -1 for all.')
    if n in (-1, len(pool)):
      rows = pool
    else:
      rows = pool[_stratified(labels, n, np.random.default_rng([seed, SPLITS.index(split)]))]
    drawn[split] = Drawn(source, pool, rows)
  return drawn


def _count(labels, c):
  return int(np.sum(labels == c))


def _write_file_list(workdir, name, paths, labels):
  """Writes workdir/protocol/<name>.txt (path, tab, label); fails if another list is there."""
  path = os.path.join(workdir, 'protocol', f'{name}.txt')
  text = ''.join(f'{p}\t{l}\n' for p, l in zip(paths, labels))
  if os.path.exists(path):
    with open(path) as f:
      if f.read() != text:  # Resuming a run on other examples would mix two experiments.
        raise ValueError(f'{path} lists other files than this config draws (another data_dir, '
                         f'seed or num_{name}?); use a new workdir or delete that file.')
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


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
          f'{len(meta["bad_files"])} bad files left out, listed in '
          f'{face_dataset.report_path(builder)}']


def _load(config, workdir, splits):
  """load_splits, also returning the summary table's lines."""
  builder = face_dataset.build(config.data_dir, config.tfds_dir, config.max_bad_fraction)
  index = {s: face_dataset.read_index(builder, s) for s in builder.info.splits}
  drawn = draw_protocol(index, {s: int(config[f'num_{s}']) for s in splits}, config.seed)
  if workdir:  # Checked before decoding, which is the slow part.
    for name, (source, _, rows) in drawn.items():
      _write_file_list(workdir, name, [index[source][0][r] for r in rows], index[source][1][rows])
  loaded = {}
  for name, (source, _, rows) in drawn.items():
    paths, labels = index[source]
    loaded[name] = Split(
        name=name,
        images=_cached_images(builder, source, rows, config.image_size, config.resize),
        labels=labels[rows],
        paths=[paths[r] for r in rows],
        source_dir=builder.info.metadata['source_dir'])
  return loaded, _summary(builder, index, drawn)


def load_splits(config, workdir=None, splits=SPLITS):
  """Loads the protocol's splits of config.data_dir, decoded and resized to config.image_size.

  Builds or reuses the folder's TFDS dataset under config.tfds_dir, draws num_train/num_valid/
  num_test with config.seed, and writes workdir/protocol/<split>.txt when workdir is given.
  """
  loaded, table = _load(config, workdir, splits)
  for line in table:
    logging.info('%s', line)
  return loaded


def load_folder(path, image_size, resize='stretch', max_bad_fraction=0.01):
  """Loads every image of a labelled folder (any accepted layout) without building a dataset.

  Undecodable files are left out, logged and listed in the Split's bad_files; more than
  max_bad_fraction of them is an error.
  """
  scan = face_dataset.scan_folder(path)
  examples = sorted(e for v in scan.examples.values() for e in v)
  images = np.zeros((len(examples), image_size, image_size, 3), np.uint8)
  with tqdm.tqdm(total=len(examples), desc=f'Decoding {scan.root}', unit=' img') as bar:
    bad = _decode_resize(lambda k: face_dataset.read_file(scan.root, examples[k][0]),
                         np.arange(len(examples)), image_size, resize, images, bar)
  bad_files = [(examples[k][0], reason) for k, reason in bad]
  for rel, reason in bad_files:
    logging.warning('Left out %s: %s', os.path.join(scan.root, rel), reason)
  if len(bad) > max_bad_fraction * len(examples):
    raise face_dataset.FolderError(
        f'{len(bad)} of {len(examples)} files in {scan.root} could not be decoded, more than '
        f'max_bad_fraction={max_bad_fraction}: ' + '; '.join(f'{p}: {r}' for p, r in bad_files[:10]))
  keep = np.setdiff1d(np.arange(len(examples)), [k for k, _ in bad])
  return Split(
      name=os.path.basename(scan.root),
      images=images[keep],
      labels=np.asarray([examples[k][1] for k in keep], np.int32),
      paths=[examples[k][0] for k in keep],
      source_dir=scan.root,
      bad_files=bad_files)


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


def train_batches(split, batch_size, *, seed, epoch, flip, shift=0.0, with_images=True,
                  process_index=None, process_count=None):
  """Yields this process's slice of each global training batch of one epoch.

  The order, flips and shifts are drawn for the whole epoch from (seed, epoch), so the global
  batches are the same for any number of processes. Keys: 'index', 'flip', 'label' and, if
  with_images, 'image' (uint8, flipped and shifted by up to shift * size pixels).
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
  for step in range(steps):
    rows = np.arange(step * batch_size, (step + 1) * batch_size)[local]
    index = order[rows]
    batch = {'index': index.astype(np.int32), 'flip': flips[rows], 'label': split.labels[index]}
    if with_images:
      batch['image'] = augment(split.images[index], flips[rows], shifts[rows])
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


def main(argv):
  del argv
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  for name in ('data_dir', 'tfds_dir', 'num_train', 'num_valid', 'num_test', 'seed',
               'image_size', 'resize', 'max_bad_fraction'):
    if FLAGS[name].value is not None:
      config[name] = FLAGS[name].value
  try:
    _, table = _load(config, FLAGS.workdir, SPLITS)
  except (face_dataset.FolderError, ValueError) as e:  # Bad input: the message says it all.
    sys.exit(f'Error: {e}')
  print('\n'.join(table))


if __name__ == '__main__':
  flags.DEFINE_string('data_dir', None, 'Face folder (default: the config\'s, GENDER_JAX_DATA).')
  flags.DEFINE_string('tfds_dir', None, 'Where the dataset is built (default: the config\'s).')
  flags.DEFINE_integer('num_train', None, 'Train images drawn (-1: all).')
  flags.DEFINE_integer('num_valid', None, 'Validation images drawn (-1: all).')
  flags.DEFINE_integer('num_test', None, 'Test images drawn (-1: all).')
  flags.DEFINE_integer('seed', None, 'Protocol seed.')
  flags.DEFINE_integer('image_size', None, 'Side of the square images, in pixels.')
  flags.DEFINE_enum('resize', None, RESIZES, 'How faces become squares.')
  flags.DEFINE_float('max_bad_fraction', None, 'Fail if more files than this are undecodable.')
  flags.DEFINE_string('workdir', None, 'Write the protocol file lists to WORKDIR/protocol/.')
  app.run(main)
