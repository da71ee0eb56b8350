"""The study's protocol: a face folder's dataset, the seeded stratified draw of each split, and the
drawn images read as the model's inputs.

`load_splits` builds (or reuses) the TFDS dataset of a face folder, draws the protocol (a seeded,
stratified subsample per split) and reads the drawn images as the model's inputs, made once and
cached beside the dataset (gender_jax/data/input_cache.py).
"""
import os
from typing import NamedTuple

from absl import logging
import jax
import numpy as np
import tqdm

from gender_jax.data import batching
from gender_jax.data import face_dataset
from gender_jax.data import input_cache
from gender_jax.faces import detect
from gender_jax.faces import inputs
from gender_jax import LABELS
from gender_jax.training import run_dir

SPLITS = face_dataset.SPLITS
# A flat {male,female} folder is cut per class into these shares of train/valid/test pools.
FLAT_FRACTIONS = {'train': 0.8, 'valid': 0.1, 'test': 0.1}


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


class Protocol(NamedTuple):
  """A protocol's loaded splits, how their images became inputs, and the data summary."""
  splits: dict  # Split name -> batching.Split.
  face_input: inputs.FaceInput  # Its template derived from the training faces if none was given.
  summary: list  # Lines of the table: files, bad files, usable and drawn images per split.


def face_finder(face_input):
  """The MTCNN detector that face_input finds faces with; None where it resizes whole images.

  Raises weights_folder.MissingWeightsError, with the command that makes them, when
  face_input.detector_weights holds no converted MTCNN.
  """
  return detect.load_detector(face_input.detector_weights) if face_input.aligns else None


def _with_template(face_input, train_marks):
  """face_input with its template derived from the training faces' landmarks, if it has none."""
  if not face_input.aligns or face_input.template:
    return face_input
  if train_marks is None:
    raise ValueError('config.face_template is empty and no train split is loaded to derive it '
                     f'from; give the run\'s template (its {run_dir.CONFIG} has it).')
  found = train_marks.found
  return face_input.with_derived_template(train_marks.points[found], train_marks.sizes[found])


def load_protocol(config, workdir=None, splits=SPLITS):
  """load_splits without printing the summary."""
  builder = face_dataset.build(config.data_dir, config.tfds_dir, config.max_bad_fraction)
  index = {s: face_dataset.read_index(builder, s) for s in builder.info.splits}
  drawn = draw_protocol(index, {s: int(config[f'num_{s}']) for s in splits}, config.seed)
  if workdir:  # Checked before decoding, which is the slow part.
    for name, (source, _, rows) in drawn.items():
      _write_file_list(workdir, name, [index[source][0][r] for r in rows], index[source][1][rows])
  face_input = inputs.FaceInput.from_config(config)
  detector = face_finder(face_input)
  marks = {}
  if detector:
    marks = {name: input_cache.cached_landmarks(builder, source, rows, detector, detector.id)
             for name, (source, _, rows) in drawn.items()}
    face_input = _with_template(
        face_input, marks['train'].take(drawn['train'].rows) if 'train' in marks else None)
  loaded, face_lines = {}, []
  for name, (source, _, rows) in drawn.items():
    paths, labels = index[source]
    images, records = input_cache.cached_images(builder, source, rows, face_input,
                                                detector and detector.id, marks.get(name))
    split = batching.Split(name=name, images=images, labels=labels[rows],
                           paths=[paths[r] for r in rows],
                           source_dir=builder.info.metadata['source_dir'], records=records)
    if marks:
      found = marks[name].found[rows]
      if workdir:
        _write_file_list(workdir, f'no_face_{name}', [paths[r] for r in rows[~found]],
                         labels[rows[~found]])
      split = _missing_faces(split, found, face_input.missing)
      face_lines.append(_face_line(split, len(rows), face_input.missing))
    loaded[name] = split
  return Protocol(loaded, face_input, _summary(builder, index, drawn) + face_lines)


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
  """Loads the protocol's splits of config.data_dir as the model's inputs: a Protocol.

  Builds or reuses the folder's TFDS dataset under config.tfds_dir, draws num_train/num_valid/
  num_test with config.seed, and writes workdir/protocol/<split>.txt when workdir is given. With
  face alignment and no config.face_template, the Protocol's face_input holds the template
  derived from the training faces (the config is left as it is). Prints the data summary.
  """
  loaded = load_protocol(config, workdir, splits)
  if jax.process_index() == 0:
    for line in loaded.summary:
      tqdm.tqdm.write(line)
  return loaded


def load_folder(path, face_input, detector=None, max_bad_fraction=0.01):
  """Loads every image of a labelled folder (any accepted layout) without building a dataset.

  Images become the model's inputs as face_input says (resized, or their face aligned by
  `detector`). Undecodable files are left out, logged and listed in the Split's bad_files; more
  than max_bad_fraction of them is an error.
  """
  scan = face_dataset.scan_folder(path)
  examples = sorted(e for v in scan.examples.values() for e in v)
  images, found, bad = input_cache.folder_images(scan.root, [rel for rel, _ in examples],
                                                 face_input, detector)
  bad_files = [(examples[k][0], reason) for k, reason in bad]
  for rel, reason in bad_files:
    logging.warning('Left out %s: %s', os.path.join(scan.root, rel), reason)
  undecodable = sum(not r.startswith(face_dataset.NOT_IMAGE_DATA) for _, r in bad_files)
  if undecodable > max_bad_fraction * len(examples):
    raise face_dataset.FolderError(
        f'{undecodable} of {len(examples)} files in {scan.root} could not be decoded, more than '
        f'max_bad_fraction={max_bad_fraction}: '
        + '; '.join(f'{p}: {r}' for p, r in bad_files[:10]))
  keep = np.setdiff1d(np.arange(len(examples)), [k for k, _ in bad])
  split = batching.Split(
      name=os.path.basename(scan.root),
      images=images[keep],
      labels=np.asarray([examples[k][1] for k in keep], np.int32),
      paths=[examples[k][0] for k in keep],
      source_dir=scan.root,
      bad_files=bad_files)
  if detector:
    split = _missing_faces(split, found[keep], face_input.missing)
    logging.info('%s', _face_line(split, len(keep), face_input.missing))
  return split
