"""Predicts the gender of faces in image files with a trained run.

  python -m gender_jax.predict --workdir=runs/vggface PATH... [--csv FILE] [--batch_size N]

PATHs are image files or folders (searched recursively for image extensions). Any size and mode
is accepted: images become RGB and are resized as the run's config says; preprocessing is the
model's own. Unreadable files are reported and skipped. Exit status 0 when at least one image
was predicted, 1 otherwise.
"""
import csv
import os
import sys

from absl import app
from absl import flags
import numpy as np

from gender_jax import LABELS
from gender_jax import face_dataset
from gender_jax import inference
from gender_jax import input_pipeline

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm',
                    '.pgm', '.pbm')


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


def load_image(path, size, resize):
  """An image file as the model's uint8 (size, size, 3) input, decoded as training decodes."""
  with open(path, 'rb') as f:
    image = face_dataset.decode_rgb(f.read())
  return input_pipeline.resize_image(image, size, resize)


def predict_files(trained, files, batch_size=64):
  """([(path, P(male))], [(path, reason)]) for image files, read batch by batch."""
  size, resize = trained.config.image_size, trained.config.resize
  predictions, errors = [], []
  for start in range(0, len(files), batch_size):
    images, loaded = [], []
    for path in files[start:start + batch_size]:
      try:
        images.append(load_image(path, size, resize))
        loaded.append(path)
      except face_dataset.BadImageError as e:
        errors.append((path, str(e)))
      except OSError as e:  # Unreadable: permissions, a vanished file, I/O errors.
        errors.append((path, f'{type(e).__name__}: {e}'))
    if images:
      p_male = inference.predict_proba(trained, np.stack(images), batch_size)
      predictions.extend(zip(loaded, p_male.tolist()))
  return predictions, errors


def label_of(p_male):
  return LABELS[int(p_male >= 0.5)]


def format_table(predictions):
  width = max([len('path')] + [len(p) for p, _ in predictions])
  lines = [f"{'path':<{width}}  predicted  P(male)"]
  lines += [f'{path:<{width}}  {label_of(p):<9}  {p:.4f}' for path, p in predictions]
  return '\n'.join(lines)


def write_csv(path, predictions, errors):
  """One row per image: path, predicted, p_male, error (unreadable files have only the error)."""
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['path', 'predicted', 'p_male', 'error'])
    writer.writerows([image, label_of(p), f'{p:.6f}', ''] for image, p in predictions)
    writer.writerows([image, '', '', reason] for image, reason in errors)


FLAGS = flags.FLAGS


def define_flags():
  """Defines the command line flags; only when run as a script, so imports never clash."""
  flags.DEFINE_string('workdir', None, 'A run directory written by gender_jax.main.')
  flags.DEFINE_string('csv', None, 'Write predictions to this CSV instead of a console table.')
  flags.DEFINE_integer('batch_size', 64, 'Images read and predicted at once.')
  flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('Give image files or folders to predict.')
  files, errors = find_images(argv[1:])
  trained = inference.load_trained(FLAGS.workdir)
  predictions, unreadable = predict_files(trained, files, FLAGS.batch_size)
  errors += unreadable
  if FLAGS.csv:
    write_csv(FLAGS.csv, predictions, errors)
    print(f'Wrote {len(predictions)} predictions to {FLAGS.csv}')
  elif predictions:
    print(format_table(predictions))
  for path, reason in errors:
    print(f'Not predicted: {path}: {reason}', file=sys.stderr)
  print(f'{len(predictions)} predicted, {len(errors)} not.', file=sys.stderr)
  return 0 if predictions else 1


if __name__ == '__main__':
  define_flags()
  app.run(main)
