"""Input pipeline speed: img/s from the built TFDS dataset to preprocessed float32 batches.

For each image size, one epoch of the study's protocol (5000/750/750 by default) goes through
gender_jax.data: protocol.load_splits, then augment.train_batches (the rows as stored; the training
step augments them on the devices) over the train split and batching.eval_batches over valid and
test, each batch passed through preprocessing.preprocess('caffe_imagenet') on the host to float32. Measured three ways, in this run:
  naive: sequential PIL open + decode + RGB + resize per file, batched and preprocessed the same;
  cold:  load_splits with an empty decoded cache (first load at this size: decode + resize in
         threads, cache written);
  warm:  load_splits again (decoded cache hit), the cost of every later run.
img/s counts the images delivered over load + one epoch; 'epoch img/s' the epoch alone (what each
further epoch costs), and 'uint8 epoch img/s' the epoch without the host preprocessing (as the
trainer runs it: preprocessing happens inside the jitted model). The one-time dataset build is timed apart. Each setting runs --repeat times
and the fastest is shown, with its ratio to the naive baseline.

  python benchmarks/data_loading.py [--data_dir PATH] [--sizes 112,224] [--batch 64]
"""
import argparse
import glob
import os
import platform
import tempfile
import time

import numpy as np
from PIL import Image

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # Batches stay on the host; no accelerator needed.
os.environ.setdefault('TQDM_DISABLE', '1')

from gender_jax import base_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from gender_jax import process  # pylint: disable=g-import-not-at-top,wrong-import-position
from gender_jax.data import augment  # pylint: disable=g-import-not-at-top,wrong-import-position
from gender_jax.data import batching  # pylint: disable=g-import-not-at-top,wrong-import-position
from gender_jax.data import face_dataset  # pylint: disable=g-import-not-at-top,wrong-import-position
from gender_jax.data import protocol  # pylint: disable=g-import-not-at-top,wrong-import-position
from gender_jax.models import preprocessing  # pylint: disable=g-import-not-at-top,wrong-import-position

PREPROCESSING = 'caffe_imagenet'


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir', default=os.path.join(_REPO, '..', 'shared', 'data',
                                                         'celeba_gender'))
  parser.add_argument('--tfds_dir', default='', help='Build here (default: a temporary folder).')
  parser.add_argument('--sizes', default='112,224', help='Image sizes in px, comma separated.')
  parser.add_argument('--batch', type=int, default=64, help='Global batch size.')
  parser.add_argument('--num', default='5000,750,750', help='num_train,num_valid,num_test.')
  parser.add_argument('--shift', type=float, default=0.1, help='augment_shift of train batches.')
  parser.add_argument('--repeat', type=int, default=3,
                      help='Runs per setting; the fastest is shown (the host may be shared).')
  return parser.parse_args(argv)


def one_epoch(splits, batch, shift, preprocess=True):
  """Preprocessed float32 batches of one epoch of every split; returns the images delivered."""
  delivered = 0
  batches = [augment.train_batches(splits['train'], batch, seed=0, epoch=1, flip=True,
                                          shift=shift)]
  batches += [batching.eval_batches(splits[s], batch) for s in ('valid', 'test')]
  for stream in batches:
    for b in stream:
      x = preprocessing.preprocess(b['image'], PREPROCESSING) if preprocess else b['image']
      delivered += len(x)
  return delivered


def naive_epoch(files, size, batch):
  """The baseline: each file opened, decoded and resized in turn, then batched and preprocessed."""
  delivered = 0
  for start in range(0, len(files), batch):
    images = [np.asarray(Image.open(f).convert('RGB').resize((size, size), Image.BILINEAR))
              for f in files[start:start + batch]]
    delivered += len(preprocessing.preprocess(np.stack(images), PREPROCESSING))
  return delivered


def timed(fn):
  start = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - start


def main(argv=None):
  args = parse_args(argv)
  if args.tfds_dir:
    run(args, args.tfds_dir)
  else:  # The decoded caches take about 1 GB at 224 px: removed afterwards.
    with tempfile.TemporaryDirectory(prefix='bench_tfds_') as tfds_dir:
      run(args, tfds_dir)


def run(args, tfds_dir):
  """Builds the dataset under tfds_dir and prints the table."""
  config = base_config.get_config()
  config.data_dir, config.tfds_dir = args.data_dir, tfds_dir
  config.num_train, config.num_valid, config.num_test = map(int, args.num.split(','))
  print(f'Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, '
        f'load average {os.getloadavg()[0]:.2f} at start; Python {platform.python_version()}, '
        f'numpy {np.__version__}, Pillow {Image.__version__}')
  builder, build_s = timed(lambda: face_dataset.build(config.data_dir, tfds_dir))
  num_files = sum(builder.info.splits[s].num_examples for s in builder.info.splits)
  print(f'Build (once per folder version): {num_files} files in {build_s:.1f} s '
        f'({num_files / build_s:.0f} files/s), into {builder.data_dir}')
  index = {s: face_dataset.read_index(builder, s) for s in builder.info.splits}
  sizes = {s: config[f'num_{s}'] for s in protocol.SPLITS}
  files = [os.path.join(builder.info.metadata['source_dir'], index[d.source][0][r])
           for d in protocol.draw_protocol(index, sizes, config.seed).values()
           for r in d.rows]
  print(f'{"size":>5} {"path":>6} {"load s":>7} {"epoch s":>8} {"epoch img/s":>12} '
        f'{"img/s":>7} {"vs naive":>9} {"uint8 epoch img/s":>18}')
  for size in map(int, args.sizes.split(',')):
    config.image_size = size
    naive = None
    for path in ('naive', 'cold', 'warm'):
      best = None
      for _ in range(args.repeat):
        if path == 'cold':  # As on the first load at this size: no decoded images.
          for name in glob.glob(os.path.join(os.fspath(builder.data_dir), 'decoded-*')):
            os.remove(name)
        if path == 'naive':
          load_s, uint8_rate = 0.0, '-'
          delivered, epoch_s = timed(lambda: naive_epoch(files, size, args.batch))
        else:
          splits, load_s = timed(lambda: protocol.load_splits(config).splits)
          delivered, epoch_s = timed(lambda: one_epoch(splits, args.batch, args.shift))
          n, uint8_s = timed(lambda: one_epoch(splits, args.batch, args.shift, preprocess=False))
          uint8_rate = f'{n / uint8_s:.0f}'
        if best is None or load_s + epoch_s < sum(best[:2]):
          best = (load_s, epoch_s, delivered, uint8_rate)
      load_s, epoch_s, delivered, uint8_rate = best
      rate = delivered / (load_s + epoch_s)
      naive = naive or rate
      print(f'{size:5d} {path:>6} {load_s:7.2f} {epoch_s:8.2f} {delivered / epoch_s:12.0f} '
            f'{rate:7.0f} {rate / naive:8.1f}x {uint8_rate:>18}', flush=True)
  print(f'Load average {os.getloadavg()[0]:.2f} at the end.')


if __name__ == '__main__':
  process.apply()  # As the commands do, before JAX starts its backend.
  main()
