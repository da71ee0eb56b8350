"""How fast the host can feed the devices with training batches, device work apart.

feed: one epoch of configs/custom.py's training batches over random uint8 images held in memory,
at each --sizes px, batch --batch, as train.py feeds its step: `augment.train_batches` (order,
flips, shifts and jitter drawn, the uint8 rows gathered) and `Mesh.shard_batch` (handed to the
devices), waiting for each transfer. The augmentation itself runs in the jitted step, on the
devices: its rate on this machine's CPU devices is printed apart (`device augment`), and the host
implementation it replaced (tests/augment_reference.py: the same draws, image by image in numpy
and Pillow, as before issue 33) is timed in the same run as the baseline, on the first
--before_images. Each setting runs
--rounds times, taking turns; the median is shown.

faces: the face finder's host work, device work replayed apart (benchmarks/face_detection.py
--host): --face_photos CelebA crops and UTKFace chips, one photo per call and 64, now and before
issue 33; the slowest setting's photos/s is printed. Needs ../shared/data and facenet-pytorch
(for MTCNN's weights); skipped with a reason without them.

  python benchmarks/host_feed.py                        # 80, 112 and 224 px
  python benchmarks/host_feed.py --sizes=224 --images=2048 --rounds=5
  python benchmarks/host_feed.py --sizes=80 --epoch_size=80   # whole CPU epochs too
  python benchmarks/host_feed.py --face_photos=0              # the training feed alone
"""
import argparse
import importlib.util
import os
import pathlib
import platform
import statistics
import time

import jax
import numpy as np
import tqdm

from gender_jax import base_config
from gender_jax import process
from gender_jax.data import augment
from gender_jax.data import batching
from gender_jax.models import networks
from gender_jax.training import sharded
from gender_jax.training import train
import face_detection  # Beside this file (sys.path[0]), as the next.
from train_step_frameworks import cpu_model, load_average

_REPO = pathlib.Path(__file__).resolve().parents[1]


def load_reference():
  """tests/augment_reference.py, the host augmentation before issue 33, loaded from its file."""
  spec = importlib.util.spec_from_file_location(
      'augment_reference', _REPO / 'tests' / 'augment_reference.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', default='80,112,224', help='Image sizes, comma-separated.')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--images', type=int, default=1024, help='Images of one timed epoch.')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--before_images', type=int, default=512,
                      help='Images the host jitter (the baseline, slow at 224 px) is timed on.')
  parser.add_argument('--epoch_size', type=int, default=0,
                      help='Also time whole training epochs at this size, device work included, '
                           'augmented in the step against on the host first (0: skip).')
  parser.add_argument('--face_photos', type=int, default=256,
                      help="CelebA crops and UTKFace chips each the face finder's host work is "
                           'timed on (0: skip).')
  args = parser.parse_args(argv)
  args.sizes = [int(s) for s in args.sizes.split(',')]
  return args


def random_split(images, size):
  rng = np.random.default_rng(0)
  return batching.Split('train', rng.integers(0, 256, (images, size, size, 3), np.uint8),
                        rng.integers(0, 2, images).astype(np.int32),
                        paths=[f'{i}.jpg' for i in range(images)], source_dir='')


def feed_seconds(split, batch, jitter, mesh):
  """Seconds for the host to make and hand over an epoch of training batches."""
  start = time.perf_counter()
  for b in augment.train_batches(split, batch, seed=0, epoch=1, flip=True, jitter=jitter):
    jax.block_until_ready(mesh.shard_batch(train.step_batch(b)))
  return time.perf_counter() - start


def host_jitter_seconds(split, batch, jitter, reference):
  """Seconds of the same epoch with the augmentation made on the host, as before issue 33."""
  start = time.perf_counter()
  for b in augment.train_batches(split, batch, seed=0, epoch=1, flip=True, jitter=jitter):
    reference.apply(b['image'], b['augment'], jitter)
  return time.perf_counter() - start


def device_augment_seconds(split, batch, jitter, mesh):
  """Seconds of the jitted augmentation alone over the epoch, on this machine's devices."""
  apply = jax.jit(augment.apply, static_argnums=2)
  batches = [mesh.shard_batch(train.step_batch(b)) for b in augment.train_batches(
      split, batch, seed=0, epoch=1, flip=True, jitter=jitter)]
  jax.block_until_ready(apply(batches[0]['image'], batches[0]['augment'], jitter))  # Compile.
  start = time.perf_counter()
  jax.block_until_ready([apply(b['image'], b['augment'], jitter) for b in batches])
  return time.perf_counter() - start


def epoch_seconds(split, batch, jitter, mesh, state, on_device, reference, step):
  """Seconds of a training epoch of configs/custom.py's CNN from `state` through
  train.train_epoch, its images augmented in the step (on_device) or on the host first, as
  before issue 33."""

  def batches():
    for b in augment.train_batches(split, batch, seed=0, epoch=1, flip=True, jitter=jitter):
      yield mesh.shard_batch(train.step_batch(b) if on_device else {
          'image': reference.apply(b['image'], b['augment'], jitter), 'label': b['label']})

  start = time.perf_counter()
  with tqdm.tqdm(disable=True) as bar:
    jax.block_until_ready(train.train_epoch(step, state, batches(), bar))
  return time.perf_counter() - start


def face_rates(photos, rounds):
  """{'now', 'before': the face finder's slowest host rate in photos/s}, printing each setting;
  None, saying why, where the photos or MTCNN's weights are not here."""
  missing = [folder for folder in (face_detection.CELEBA_DIR, face_detection.UTKFACE_DIR)
             if not os.path.isdir(folder)]
  if missing:
    print(f'faces: skipped, no photos at {", ".join(missing)}')
    return None
  if importlib.util.find_spec('facenet_pytorch') is None:
    print("faces: skipped, facenet-pytorch (MTCNN's weights) is not installed: install it as "
          '.ci/run does')
    return None
  rates = face_detection.host_rates(photos, rounds)
  return {name: face_detection.slowest(rates, name) for name in ('now', 'before')}


def median_rate(images, seconds):
  return images / statistics.median(seconds)


def main(argv=None):
  args = parse_args(argv)
  process.apply()
  config = base_config.load_get_config(str(_REPO / 'configs' / 'custom.py'))()
  jitter = augment.Jitter.from_config(config)
  reference = load_reference()
  mesh = sharded.Mesh.create()
  print(f'{cpu_model()}, {os.cpu_count()} CPUs, load average {load_average()} at start; '
        f'Python {platform.python_version()}, jax {jax.__version__}, {mesh.size} x '
        f'{jax.devices()[0].platform}; configs/custom.py jitter, batch {args.batch}, '
        f'{args.images} images, {args.rounds} rounds')
  feeds = {}
  for size in args.sizes:
    split = random_split(args.images - args.images % args.batch, size)
    before_split = split.take(np.arange(min(len(split), args.before_images)))
    n = batching.num_train_steps(split, args.batch) * args.batch
    n_before = batching.num_train_steps(before_split, args.batch) * args.batch
    feed_seconds(split, args.batch, jitter, mesh)  # Warm: first touches, transfers' set-up.
    times = {'feed': [], 'host jitter (before)': [], 'device augment': []}
    for _ in range(args.rounds):
      times['feed'].append(feed_seconds(split, args.batch, jitter, mesh))
      times['host jitter (before)'].append(
          host_jitter_seconds(before_split, args.batch, jitter, reference))
      times['device augment'].append(device_augment_seconds(split, args.batch, jitter, mesh))
    rates = {name: median_rate(n_before if 'before' in name else n, seconds)
             for name, seconds in times.items()}
    feeds[size] = rates['feed']
    spread = ', '.join(f'{n / s:,.0f}' for s in times['feed'])
    print(f'{size} px: feed {rates["feed"]:,.0f} img/s (rounds: {spread}); host jitter before '
          f'{rates["host jitter (before)"]:,.0f} img/s: feed / before '
          f'{rates["feed"] / rates["host jitter (before)"]:.1f}x; device augment on '
          f'{jax.devices()[0].platform} {rates["device augment"]:,.0f} img/s')
  if args.epoch_size:  # Whole epochs, device work included: what a CPU-only run gets.
    config.image_size = args.epoch_size
    split = random_split(args.images - args.images % args.batch, args.epoch_size)
    n = batching.num_train_steps(split, args.batch) * args.batch
    times = {True: [], False: []}
    step = train.jit_train_step(mesh, stop_base_gradient=False, jitter=jitter)
    # One state, copied for each epoch (the step donates it): a state made anew holds a new
    # model and optimizer, and the step would compile again.
    state = jax.device_put(train.create_train_state(
        config, networks.create_model(config), jax.random.PRNGKey(0), n // args.batch),
                           mesh.replicated)
    fresh_state = lambda: jax.tree.map(lambda x: x.copy(), state)
    for _ in range(args.rounds + 1):  # The first round compiles.
      for on_device in times:
        times[on_device].append(epoch_seconds(split, args.batch, jitter, mesh, fresh_state(),
                                              on_device, reference, step))
    device, host = (median_rate(n, times[k][1:]) for k in (True, False))
    print(f'epoch {args.epoch_size} px on {jax.devices()[0].platform}: augmented in the step '
          f'{device:,.0f} img/s, on the host first (before) {host:,.0f} img/s: '
          f'{device / host:.2f}x')
  faces = face_rates(args.face_photos, args.rounds) if args.face_photos else None
  if faces:
    print(f'face finder host work, slowest setting: {faces["now"]:,.0f} photos/s, before '
          f'{faces["before"]:,.0f}: {faces["now"] / faces["before"]:.1f}x')
  for size, rate in feeds.items():
    print(f'feed {size} px: {rate:,.0f} img/s')
  if faces:
    print(f'faces: {faces["now"]:,.0f} img/s')


if __name__ == '__main__':
  main()
