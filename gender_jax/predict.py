"""Predicts the gender of faces in image files with a trained run.

  python -m gender_jax.predict --workdir=runs/custom PATH... [--csv FILE] [--annotate DIR]

PATHs are image files or folders (searched recursively for image extensions). Any size and mode
is accepted. A run trained on aligned faces (config.face_align) finds every face in each photo,
aligns it as in training and gives one row per face (box, landmarks, detector score, P(male));
photos without a face are reported. A run trained on whole images resizes each file as its
config says and gives one row per file. Unreadable files are reported and skipped. Exit status 0
when at least one face or image was predicted, 1 otherwise.
"""
import csv
import os
import sys
from typing import NamedTuple

from absl import app
from absl import flags
import numpy as np
from PIL import ImageDraw

from gender_jax import cli
from gender_jax.data import image_files
from gender_jax.data import protocol
from gender_jax.faces import inputs
from gender_jax import LABELS
from gender_jax.training import trained_run

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm',
                    '.pgm', '.pbm')
NO_FACE = 'no face found'


class Prediction(NamedTuple):
  """P(male) of one face of a photo, or of the whole image for runs without face alignment."""
  path: str
  p_male: float
  face: int | None = None  # The face's index in its photo, highest detector score first.
  box: np.ndarray | None = None  # x1, y1, x2, y2 in the photo's pixels.
  landmarks: np.ndarray | None = None  # (5, 2): eyes, nose, mouth corners.
  score: float | None = None  # The detector's face probability.


def find_images(paths):
  """(image files, [(path, reason)]): files as given, folders searched recursively, sorted."""
  files, errors = [], []
  for path in paths:
    if os.path.isdir(path):
      found = sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                     for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
      if not found:
        errors.append((path, f'no images ({", ".join(IMAGE_EXTENSIONS)}) in this folder'))
      files.extend(found)
    elif os.path.isfile(path):
      files.append(path)
    else:
      errors.append((path, 'no such file or folder'))
  return files, errors


def load_image(path):
  """An image file as an upright RGB Pillow image, decoded as training decodes."""
  with open(path, 'rb') as f:
    return image_files.decode_rgb(f.read())


def _face_inputs(face_input, detector, path, image):
  """(inputs, predictions without p_male) for every face the detector finds in a photo."""
  found = detector.detect([np.asarray(image)])[0]
  faces = [face_input.inputs(image, points) for points in found.landmarks]
  rows = [Prediction(path, 0.0, i, box, points, float(score))
          for i, (box, points, score) in enumerate(zip(found.boxes, found.landmarks,
                                                       found.scores))]
  return faces, rows


def iter_predictions(trained, files, detector=None, batch_size=64):
  """Yields ([Prediction], [(path, reason)]) per chunk of files: faces if detector, else images."""
  face_input = inputs.FaceInput.from_config(trained.config)
  for start in range(0, len(files), batch_size):
    model_inputs, rows, errors = [], [], []
    for path in files[start:start + batch_size]:
      try:
        image = load_image(path)
      except image_files.BadImageError as e:
        errors.append((path, str(e)))
        continue
      except OSError as e:  # Unreadable: permissions, a vanished file, I/O errors.
        errors.append((path, f'{type(e).__name__}: {e}'))
        continue
      if detector is None:
        model_inputs.append(face_input.inputs(image))
        rows.append(Prediction(path, 0.0))
        continue
      faces, face_rows = _face_inputs(face_input, detector, path, image)
      if not face_rows:
        errors.append((path, NO_FACE))
      model_inputs += faces
      rows += face_rows
    if model_inputs:
      p_male = trained_run.predict_proba(trained, np.stack(model_inputs), batch_size)
      rows = [row._replace(p_male=float(p)) for row, p in zip(rows, p_male)]
    yield rows, errors


def predict_files(trained, files, detector=None, batch_size=64):
  """([Prediction], [(path, reason)]) of all files."""
  predictions, errors = [], []
  for rows, chunk_errors in iter_predictions(trained, files, detector, batch_size):
    predictions += rows
    errors += chunk_errors
  return predictions, errors


def label_of(p_male):
  return LABELS[int(p_male >= 0.5)]


def format_row(prediction, width):
  face = '' if prediction.face is None else str(prediction.face)
  line = f'{image_files.printable(prediction.path):<{width}}  {face:>4}  {label_of(prediction.p_male):<9}  ' \
         f'{prediction.p_male:.4f}'
  if prediction.box is not None:
    line += f'  {prediction.score:.4f}  ' + ' '.join(f'{v:.0f}' for v in prediction.box)
  return line


def format_header(width, with_faces):
  header = f"{'path':<{width}}  {'face':>4}  predicted  P(male)"
  return header + ('  face score  box (x1 y1 x2 y2)' if with_faces else '')


CSV_FIELDS = ['path', 'face', 'predicted', 'p_male', 'face_score', 'box_x1', 'box_y1', 'box_x2',
              'box_y2', *(f'{part}_{axis}' for part in ('left_eye', 'right_eye', 'nose',
                                                        'mouth_left', 'mouth_right')
                          for axis in 'xy'), 'error']


def csv_row(prediction):
  row = {'path': image_files.printable(prediction.path), 'predicted': label_of(prediction.p_male),
         'p_male': f'{prediction.p_male:.6f}'}
  if prediction.box is not None:
    row.update(face=prediction.face, face_score=f'{prediction.score:.6f}')
    row.update(zip(CSV_FIELDS[5:9], (f'{v:.1f}' for v in prediction.box)))
    row.update(zip(CSV_FIELDS[9:19], (f'{v:.1f}' for v in np.ravel(prediction.landmarks))))
  return row


COLOURS = {'female': (230, 60, 140), 'male': (40, 120, 230)}


def annotate(path, predictions, out_dir):
  """Writes a copy of the photo with each face boxed and labelled; returns its path."""
  image = load_image(path)
  draw = ImageDraw.Draw(image)
  width = max(2, round(max(image.size) / 250))
  for p in predictions:
    label = label_of(p.p_male)
    x1, y1, x2, y2 = p.box
    draw.rectangle((x1, y1, x2, y2), outline=COLOURS[label], width=width)
    text = f'{p.face}: {label} {max(p.p_male, 1 - p.p_male):.2f}'
    left, top, right, bottom = draw.textbbox((x1, y1), text)
    draw.rectangle((x1, y1 - (bottom - top) - 4, x1 + right - left + 4, y1),
                   fill=COLOURS[label])
    draw.text((x1 + 2, y1 - (bottom - top) - 3), text, fill=(255, 255, 255))
  stem = os.path.splitext(os.path.basename(path))[0]
  out = os.path.join(out_dir, f'{stem}.png')
  k = 1
  while os.path.exists(out):  # Same names from different folders: keep both.
    out = os.path.join(out_dir, f'{stem}_{k}.png')
    k += 1
  image.save(out)
  return out


FLAGS = flags.FLAGS


def define_flags():
  """Defines the command line flags; only when run as a script, so imports never clash."""
  flags.DEFINE_string('workdir', None, 'A run directory written by gender_jax.main.')
  flags.DEFINE_string('csv', None, 'Write predictions to this CSV instead of a console table.')
  flags.DEFINE_string('annotate', None, 'Write a copy of each photo with its faces boxed and '
                      'labelled into this folder (runs trained on aligned faces).')
  flags.DEFINE_integer('batch_size', 64, 'Images read and predicted at once.')
  flags.mark_flags_as_required(['workdir'])


def _partial(path):
  """Where --csv is written until every prediction is in: a failure never leaves half a CSV at
  the path asked for."""
  return f'{path}.partial'


def _open_csv(path):
  try:
    f = open(_partial(path), 'w', newline='')
  except OSError as e:
    raise SystemExit(f'error: cannot write --csv {path}: {e.strerror}.') from None
  writer = csv.DictWriter(f, CSV_FIELDS)
  writer.writeheader()
  return f, writer


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('Give image files or folders to predict.')
  files, errors = find_images(argv[1:])
  trained = trained_run.load_trained(FLAGS.workdir)
  detector = protocol.face_finder(inputs.FaceInput.from_config(trained.config))
  if FLAGS.annotate:
    if detector is None:
      raise SystemExit(f'error: --annotate needs a run trained on aligned faces; {FLAGS.workdir} '
                       f'resizes whole images (config.face_align is \'none\').')
    os.makedirs(FLAGS.annotate, exist_ok=True)
  # Checked before any work, and written as it goes (to _partial), so a long run loses nothing.
  out = _open_csv(FLAGS.csv) if FLAGS.csv else None
  width = max([len('path')] + [len(image_files.printable(f)) for f in files])
  if out is None:
    print(format_header(width, detector is not None))
  count = 0
  for rows, chunk_errors in iter_predictions(trained, files, detector, FLAGS.batch_size):
    count += len(rows)
    errors += chunk_errors
    if out:
      out[1].writerows([csv_row(row) for row in rows])
      out[1].writerows([{'path': image_files.printable(path), 'error': reason}
                        for path, reason in chunk_errors])
    else:
      for row in rows:
        print(format_row(row, width))
    if FLAGS.annotate:
      for path in dict.fromkeys(row.path for row in rows):
        annotate(path, [row for row in rows if row.path == path], FLAGS.annotate)
  if out:
    out[0].close()
    os.replace(_partial(FLAGS.csv), FLAGS.csv)
    print(f'Wrote {count} predictions to {FLAGS.csv}')
  if FLAGS.annotate:
    print(f'Annotated photos in {FLAGS.annotate}')
  for path, reason in errors:
    print(f'Not predicted: {image_files.printable(path)}: {reason}', file=sys.stderr)
  what = 'faces' if detector else 'images'
  print(f'{count} {what} predicted; {len(errors)} files not.', file=sys.stderr)
  return 0 if count else 1


if __name__ == '__main__':
  define_flags()
  cli.run(main)
