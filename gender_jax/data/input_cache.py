"""The drawn records decoded, their faces found and made into the model's inputs once, on disk.

For a built dataset (gender_jax/data/face_dataset.py), `cached_landmarks` finds the faces of a
split's records and `cached_images` makes their model inputs: resized, or aligned onto the run's
template with those landmarks (gender_jax/faces/inputs.py). Both are kept in the dataset's folder
with a row per record of the split (gender_jax/data/record_files.py), filled in as protocols ask for
rows, and named after what made them, so another size, resize, detector (weights or
FACE_FINDING_VERSION) or template gets a cache of its own.
`folder_images` makes the same inputs in memory for a folder loaded without a dataset. Every file
is decoded by gender_jax/data/image_files.py.
"""
import concurrent.futures
import os
from typing import NamedTuple
import zipfile

import numpy as np
import tqdm

from gender_jax import full_disk
from gender_jax.data import face_dataset
from gender_jax.data import image_files
from gender_jax.data import record_files
from gender_jax.faces import align

_WINDOW = 4096  # Records decoded per round: bounds the encoded bytes held in memory at once.
_DETECT_WINDOW = 256  # Images decoded per round of finding faces: their pixels are held.


class Records(NamedTuple):
  """A split's examples as records of its dataset, and the cache of their model inputs."""
  cache: str  # Path prefix of the decoded images' cache: one row per record of `count`.
  count: int  # Records in the dataset split.
  rows: np.ndarray  # The split's examples' records, in the split's order.


class Landmarks(NamedTuple):
  """The chosen (largest) face of each image: where it was found and the image's size."""
  points: np.ndarray  # float32 (N, 5, 2) pixel (x, y); zeros where no face was found.
  found: np.ndarray  # bool (N,).
  sizes: np.ndarray  # int32 (N, 2): width, height.

  @classmethod
  def empty(cls, n):
    return cls(np.zeros((n, align.NUM_LANDMARKS, 2), np.float32), np.zeros(n, bool),
               np.zeros((n, 2), np.int32))

  def take(self, rows):
    """The landmarks of the images at `rows`."""
    return Landmarks(*(field[rows] for field in self))


def _decode_convert(read, rows, convert, out, progress):
  """Puts out[rows[k]] = convert(decode(read(k)), rows[k]) in threads; ticks a tqdm bar.

  Pillow releases the GIL while resizing and warping, so threads scale without copying pixels
  between processes. Returns [(k, reason)] of the files that could not be decoded.
  """
  def work(ks):
    bad = []
    for k in ks:
      try:
        out[rows[k]] = convert(image_files.decode_rgb(read(k)), rows[k])
      except image_files.BadImageError as e:
        bad.append((k, str(e)))
    return bad, len(ks)

  chunks = np.array_split(np.arange(len(rows)), max(1, len(rows) // 64))
  bad = []
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    for chunk_bad, n in pool.map(work, chunks):
      bad += chunk_bad
      progress.update(n)
  return bad


def _converter(face_input, marks=None):
  """convert(image, row) -> the model's input: aligned by marks where a face was found at row."""
  def convert(image, row):
    found = marks is not None and marks.found[row]
    return face_input.inputs(image, marks.points[row] if found else None)
  return convert


def cached_images(builder, split, rows, face_input, detector_id=None, marks=None):
  """The model's inputs (faces.inputs.FaceInput) of records `rows` of a built split, made once per
  what makes them.

  marks: the split's Landmarks (cached_landmarks) when face_input aligns faces. The cache lives in
  the dataset's folder (named by the folder's fingerprint) and holds every record of the split,
  filled in as protocols ask for them, with a mask of the filled ones. Returns (the images, uint8
  (len(rows), S, S, 3) read from disk when indexed; their Records).
  """
  key, convert = face_input.cache_key(detector_id), _converter(face_input, marks)
  base = os.path.join(os.fspath(builder.data_dir), f'decoded-{split}-{key}')
  num_records = builder.info.splits[split].num_examples
  size = face_input.size
  with face_dataset.locked(base + '.lock'):
    images = record_files.CheckedRows(base, num_records, (size, size, 3), np.uint8)
    todo = rows[~images.filled(rows)]
    if len(todo):
      source = builder.as_data_source(split)
      with tqdm.tqdm(total=len(todo), desc=f'Decoding {split} ({key})', unit=' img') as bar, \
          full_disk.writing(base + '.npy', full_disk.DATASET_FIX, len(todo) * size * size * 3):
        for start in range(0, len(todo), _WINDOW):
          window = todo[start:start + _WINDOW]
          blobs = [r['image'] for r in source.__getitems__(window.tolist())]
          if _decode_convert(blobs.__getitem__, window, convert, images, bar):
            _damaged(builder)
        images.commit()
  return record_files.Rows(images.array, rows), Records(base, num_records, rows)


def _damaged(builder):
  # The build decoded every stored image, so the dataset itself is damaged.
  raise RuntimeError(f'Records of {builder.data_dir} no longer decode; delete that folder to '
                     f'rebuild it.')


def _find_each(detector, images, marks, rows, bar):
  """Fills marks[rows] with the landmarks of the largest face in each decoded Pillow image.

  Each image is found alone: batched detection rounds differently with other images beside it
  (by ~1e-5 px), and a photo's landmarks must not depend on what came with it: the same in a
  dataset whatever rows were asked for, in a folder and in predict.
  """
  for row, image in zip(rows, images):
    array = np.asarray(image)
    marks.sizes[row] = array.shape[1], array.shape[0]
    found = detector.detect([array])[0]
    face = align.largest_face(found)
    if face is not None:
      marks.points[row], marks.found[row] = found.landmarks[face], True
    bar.update()


def _saved_landmarks(path, count):
  """(Landmarks, done) saved at path; none done where the file is missing or damaged (its zip
  members carry CRCs), so damaged landmarks are found again, never read."""
  try:
    with np.load(path) as saved:
      marks, done = Landmarks(*(saved[f] for f in Landmarks._fields)), saved['done']
    if all(len(a) == count for a in (*marks, done)):
      return marks, done
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
    pass
  return Landmarks.empty(count), np.zeros(count, bool)


def cached_landmarks(builder, split, rows, detector, detector_id):
  """Landmarks of every record of a split (those of `rows` filled), found once per detector.

  Kept in the dataset's folder beside the decoded images, filled in as protocols ask for rows:
  the faces of exactly the records asked for are found, each image alone (`_find_each`).
  """
  path = os.path.join(os.fspath(builder.data_dir), f'landmarks-{split}-{detector_id}.npz')
  num_records = builder.info.splits[split].num_examples
  with face_dataset.locked(path + '.lock'):
    marks, done = _saved_landmarks(path, num_records)
    todo = np.unique(rows[~done[rows]])
    if len(todo):
      source = builder.as_data_source(split)
      with tqdm.tqdm(total=len(todo), desc=f'Finding faces in {split}', unit=' img') as bar:
        for start in range(0, len(todo), _DETECT_WINDOW):
          window = todo[start:start + _DETECT_WINDOW]
          try:
            images = [image_files.decode_rgb(r['image'])
                      for r in source.__getitems__(window.tolist())]
          except image_files.BadImageError:
            _damaged(builder)
          _find_each(detector, images, marks, window, bar)
          done[window] = True
      with full_disk.writing(path, full_disk.DATASET_FIX), full_disk.replacing(path) as tmp:
        np.savez(tmp, done=done, **marks._asdict())
    return marks


def folder_images(root, rels, face_input, detector=None):
  """The model's inputs (faces.inputs.FaceInput) of the files root/rels, made in memory: no
  dataset, no cache.

  Faces are found by `detector` when face_input aligns them. Returns (uint8 (N, S, S, 3) images,
  zeros where undecodable; bool (N,) where a face was found, all True without a detector;
  [(k, reason)] of the files that could not be read or decoded, by k).
  """
  read = lambda k: face_dataset.read_file(root, rels[k])
  images = np.zeros((len(rels), face_input.size, face_input.size, 3), np.uint8)
  bad, marks = [], None
  if detector:
    marks = _folder_landmarks(read, len(rels), detector, bad)
  with tqdm.tqdm(total=len(rels), desc=f'Decoding {root}', unit=' img') as bar:
    bad += _decode_convert(read, np.arange(len(rels)), _converter(face_input, marks), images, bar)
  found = np.ones(len(rels), bool) if marks is None else marks.found
  return images, found, sorted(dict(bad).items())


def _folder_landmarks(read, count, detector, bad):
  """Landmarks of images 0..count-1 of a folder; appends (k, reason) of undecodable ones to bad."""
  marks = Landmarks.empty(count)
  with tqdm.tqdm(total=count, desc='Finding faces', unit=' img') as bar:
    for start in range(0, count, _DETECT_WINDOW):
      window, images, end = [], [], min(count, start + _DETECT_WINDOW)
      for k in range(start, end):
        try:
          images.append(image_files.decode_rgb(read(k)))
          window.append(k)
        except image_files.BadImageError as e:
          bad.append((k, str(e)))
      bar.update(end - start - len(window))  # The undecodable ones.
      _find_each(detector, images, marks, window, bar)
  return marks
