"""Bounded memory: the process's memory against the dataset's size, through the real data path.

Makes a face folder of --num_images symbolic links to the real faces (../shared/data/
celeba_gender, all splits, reused cyclically under new names), 90/5/5 % train/valid/test, each
split balanced by class; a folder already holding that many images is reused. Then, as a run
reads its data: the TFDS build, load_splits with every image (num_* = -1; face_align 'none',
resize 'stretch': whole images, as alignment would need a face detection per image) decoded
into the memory-mapped cache, one pass of train_batches over train (batch 64, flips and the
jitter of configs/custom.py) and of eval_batches over valid, each batch touched, and with
--train_steps N that many steps of the custom model (train.py's own state and jitted step).
The dataset is rebuilt each run (a --tfds_dir given is reused as it is).

For each phase it prints seconds, images/s and memory in MiB: the peak RSS so far (ru_maxrss),
the RSS now (VmRSS) and its parts from /proc/self/status, anonymous (RssAnon: the process's own
arrays) and file-backed (RssFile: pages of mapped files, such as the decoded cache, which the
kernel can drop and read again), and the peak anonymous memory within the phase (sampled every
10 ms); then the sizes on disk, and a one-line JSON summary.

Meant to be run as (7.5 GB of decoded cache at 112 px; some 5 minutes on 2 cores, by the
rates of small runs)
  python benchmarks/memory_scale.py --num_images=200000 --image_size=112
and again with --num_images=20000. Memory is bounded when the anonymous peaks of the decode,
train and valid phases stay flat from 20000 to 200000 images (below about 4096 images per split
they still grow: the decoder reads 4096 records at a time). The file-backed part grows with the
dataset: the decode phase's writes and the passes' reads leave the cache's pages mapped, up to
its whole size while RAM is free, so ru_maxrss and VmRSS grow with it, though the kernel can
reclaim those pages. The dataset build is not bounded either: TFDS buffers the records it writes
in memory (up to 1 GiB) and face_dataset.read_index reads every record at once.
"""
import argparse
import contextlib
import glob
import itertools
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time

os.environ.setdefault('TQDM_DISABLE', '1')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from gender_jax import base_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from gender_jax import LABELS  # pylint: disable=g-import-not-at-top,wrong-import-position
from gender_jax import config_check  # pylint: disable=g-import-not-at-top,wrong-import-position
from gender_jax import process  # pylint: disable=g-import-not-at-top,wrong-import-position
from gender_jax.data import augment
from gender_jax.data import batching
from gender_jax.data import face_dataset  # pylint: disable=g-import-not-at-top,wrong-import-position
from gender_jax.data import protocol  # pylint: disable=g-import-not-at-top,wrong-import-position
from gender_jax.models import networks  # pylint: disable=g-import-not-at-top,wrong-import-position
from gender_jax.training import sharded  # pylint: disable=g-import-not-at-top,wrong-import-position
from gender_jax.training import train  # pylint: disable=g-import-not-at-top,wrong-import-position

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARES = {'valid': 0.05, 'test': 0.05}  # Train gets the rest.
BATCH = 64


CUSTOM_CONFIG = os.path.join(_REPO, 'configs', 'custom.py')

def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_images', type=int, default=200000)
  parser.add_argument('--image_size', type=int, default=112)
  parser.add_argument('--data_dir', default=os.path.join(_REPO, '..', 'shared', 'data',
                                                         'celeba_gender'),
                      help='The real faces the links point to.')
  parser.add_argument('--folder', default='',
                      help='The generated face folder (default TMPDIR/memory_scale/faces_N).')
  parser.add_argument('--tfds_dir', default='',
                      help='Reused as it is if given; default FOLDER/.tfds, rebuilt each run.')
  parser.add_argument('--train_steps', type=int, default=0,
                      help='Training steps of the custom model after the passes.')
  return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Memory.


def proc_status():
  """VmRSS, RssAnon and RssFile of this process, in MiB."""
  with open('/proc/self/status') as f:
    fields = dict(line.split(':', 1) for line in f)
  return {k: int(fields[k].split()[0]) / 1024 for k in ('VmRSS', 'RssAnon', 'RssFile')}


class AnonPeak(threading.Thread):
  """The largest RssAnon seen since the last reset, sampled every 10 ms."""

  def __init__(self):
    super().__init__(daemon=True)
    self.peak = 0.0

  def run(self):
    while True:
      self.peak = max(self.peak, proc_status()['RssAnon'])
      time.sleep(0.01)

  def reset(self):
    self.peak = proc_status()['RssAnon']


@contextlib.contextmanager
def phase(rows, name, sampler):
  """Times the block and records its memory; the block sets row['images']."""
  row = {'phase': name, 'images': 0}
  sampler.reset()
  start = time.perf_counter()
  yield row
  row['seconds'] = time.perf_counter() - start
  status = proc_status()
  row.update(img_per_s=row['images'] / row['seconds'],
             peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             rss_mib=status['VmRSS'], anon_mib=status['RssAnon'], file_mib=status['RssFile'],
             anon_peak_mib=max(sampler.peak, status['RssAnon']))
  rows.append(row)
  print(f'{name:16} {row["images"]:8d} {row["seconds"]:8.1f} {row["img_per_s"]:8.0f} '
        f'{row["peak_rss_mib"]:9.0f} {row["rss_mib"]:7.0f} {row["anon_mib"]:7.0f} '
        f'{row["file_mib"]:7.0f} {row["anon_peak_mib"]:10.0f}', flush=True)


def mib(paths):
  return sum(os.path.getsize(p) for p in paths) / 2**20


# ---------------------------------------------------------------------------------------------
# The face folder.


def split_counts(num_images):
  counts = {s: round(share * num_images) for s, share in SHARES.items()}
  return {'train': num_images - sum(counts.values()), **counts}


def count_images(folder):
  return sum(len(os.listdir(os.path.join(folder, s, c)))
             for s in protocol.SPLITS for c in LABELS)


def make_folder(folder, data_dir, num_images):
  """Links num_images real faces (cyclically, per class) into folder; returns how many it made."""
  if os.path.isdir(folder):
    found = count_images(folder)
    if found != num_images:
      raise SystemExit(f'{folder} holds {found} images, not {num_images}: delete it or give '
                       'another --folder.')
    return 0
  real = {c: sorted(os.path.realpath(p) for p in glob.glob(os.path.join(data_dir, '*', c, '*.jpg')))
          for c in LABELS}
  cycles = {c: enumerate(itertools.cycle(paths)) for c, paths in real.items()}
  partial = folder + '.partial'  # Renamed when whole, so a folder found is always complete.
  shutil.rmtree(partial, ignore_errors=True)
  for split, n in split_counts(num_images).items():
    for label, c in enumerate(LABELS):
      os.makedirs(os.path.join(partial, split, c))
      for k, target in itertools.islice(cycles[c], n // 2 + (n % 2) * (1 - label)):
        os.symlink(target, os.path.join(partial, split, c, f'{k:07d}_{os.path.basename(target)}'))
  os.rename(partial, folder)
  return num_images


# ---------------------------------------------------------------------------------------------
# The run.


def train_steps(config, split, steps):
  """`steps` training steps of the config's model on train batches, as train.py runs them."""
  mesh = sharded.Mesh.create()
  model = networks.create_model(config)
  state = train.create_train_state(config, model, jax.random.PRNGKey(0),
                                   batching.num_train_steps(split, BATCH))
  state = jax.device_put(state, mesh.replicated)
  jitter = augment.Jitter.from_config(config)
  step = train.jit_train_step(mesh, stop_base_gradient=train.base_is_frozen(config),
                              jitter=jitter)
  batches = augment.train_batches(split, BATCH, seed=0, epoch=2, flip=True, jitter=jitter)
  losses = []
  for batch in itertools.islice(batches, steps):
    state, sums = step(state, mesh.shard_batch(train.step_batch(batch)))
    losses.append(sums['loss'] / sums['count'])
  return [float(x) for x in jax.device_get(losses)]


def main(argv=None):
  args = parse_args(argv)
  folder = os.path.abspath(args.folder or os.path.join(
      tempfile.gettempdir(), 'memory_scale', f'faces_{args.num_images}'))
  tfds_dir = args.tfds_dir or os.path.join(folder, '.tfds')  # Hidden: not a split folder.
  if not args.tfds_dir:
    shutil.rmtree(tfds_dir, ignore_errors=True)
  config = base_config.load_get_config(CUSTOM_CONFIG)()
  config.data_dir, config.tfds_dir, config.image_size = folder, tfds_dir, args.image_size
  config.face_align, config.resize = 'none', 'stretch'
  config.num_train = config.num_valid = config.num_test = -1
  config.batch_size = BATCH
  config_check.check(config, len(jax.devices()))
  with open('/proc/meminfo') as f:
    ram = int(f.readline().split()[1]) / 2**20
  print(f'{platform.machine()}, {os.cpu_count()} CPUs, {ram:.0f} GiB RAM, load average '
        f'{os.getloadavg()[0]:.2f}; jax {jax.__version__} on {jax.devices()[0].platform}; '
        f'{args.num_images} images at {args.image_size} px in {folder}')
  print(f'{"phase":16} {"images":>8} {"s":>8} {"img/s":>8} {"peak RSS":>9} {"RSS":>7} '
        f'{"anon":>7} {"file":>7} {"anon peak":>10}   (MiB)')
  sampler, rows = AnonPeak(), []
  sampler.start()
  with phase(rows, 'folder', sampler) as row:
    row['images'] = make_folder(folder, args.data_dir, args.num_images)
  # The library's own lines (TFDS, the split table) go to stderr, leaving stdout to the table.
  with phase(rows, 'dataset build', sampler) as row, contextlib.redirect_stdout(sys.stderr):
    builder = face_dataset.build(folder, tfds_dir, config.max_bad_fraction)
    row['images'] = sum(builder.info.splits[s].num_examples for s in builder.info.splits)
  with phase(rows, 'decode', sampler) as row, contextlib.redirect_stdout(sys.stderr):
    splits = protocol.load_splits(config).splits
    row['images'] = sum(len(s) for s in splits.values())
  checksum = 0
  with phase(rows, 'train pass', sampler) as row:
    for batch in augment.train_batches(
        splits['train'], BATCH, seed=0, epoch=1, flip=True,
        jitter=augment.Jitter.from_config(config)):
      checksum += int(batch['image'][:, 0, 0, 0].sum())
      row['images'] += len(batch['image'])
  with phase(rows, 'valid pass', sampler) as row:
    for batch in batching.eval_batches(splits['valid'], BATCH):
      checksum += int(batch['image'][:, 0, 0, 0].sum())
      row['images'] += int(batch['mask'].sum())
  losses = []
  if args.train_steps:
    with phase(rows, 'train steps', sampler) as row:  # The first step compiles.
      losses = train_steps(config, splits['train'], args.train_steps)
      row['images'] = len(losses) * BATCH
  caches = [s.records.cache + '.npy' for s in splits.values()]
  records = glob.glob(os.path.join(os.fspath(builder.data_dir), '*.array_record*'))
  print(f'On disk: decoded caches {mib(caches):.0f} MiB, dataset records {mib(records):.0f} '
        f'MiB; splits {", ".join(f"{k} {len(s)}" for k, s in splits.items())}'
        + (f'; training losses {", ".join(f"{x:.3f}" for x in losses)}' if losses else ''))
  print(json.dumps({
      'num_images': args.num_images, 'image_size': args.image_size,
      'splits': {k: len(s) for k, s in splits.items()}, 'cache_mib': round(mib(caches), 1),
      'records_mib': round(mib(records), 1), 'checksum': checksum, 'losses': losses,
      'phases': [{k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}
                 for r in rows]}))


if __name__ == '__main__':
  process.apply()  # As the commands do, before JAX starts its backend.
  main()
