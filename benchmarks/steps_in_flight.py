"""How far the host's input may run ahead of training: `train.train_epoch`'s steps in flight.

An epoch of configs/custom.py (its jitter in the step, as train.py feeds it) over random
images held in memory, with train.STEPS_IN_FLIGHT and the other counts asked (`none`: never
wait, the loop before the bound), taking turns in one process after one warm-up epoch; each
epoch starts from the same initial state over the same batches, so each does the same work. Prints
img/s per count, their medians against the first count's, and how far the input ran ahead:
seconds between its last batch and the epoch's end, while a bar that counts dispatches shows
the epoch done and every queued batch is held.

  python benchmarks/steps_in_flight.py --image_size=224 --images=1920 --counts=none,1,2 --rounds=3
"""
import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np
import tqdm

from gender_jax import base_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from gender_jax import process
from gender_jax.data import augment
from gender_jax.data import batching
from gender_jax.models import networks
from gender_jax.training import sharded
from gender_jax.training import train
from train_step_frameworks import cpu_model, load_average  # Beside this file: sys.path[0].


CUSTOM_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs',
                             'custom.py')


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--images', type=int, default=1920, help='Images of one timed epoch.')
  parser.add_argument('--counts', default=f'none,{train.STEPS_IN_FLIGHT}',
                      help='Steps in flight to compare, comma-separated (none: unbounded); '
                           'the first is the baseline.')
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args(argv)
  try:
    args.counts = [None if c == 'none' else int(c) for c in args.counts.split(',')]
  except ValueError:
    parser.error(f'--counts must be whole numbers or none, not {args.counts!r}.')
  if any(c is not None and c < 1 for c in args.counts):
    parser.error('--counts must be at least 1 (or none).')
  if args.images < args.batch:
    parser.error(f'--images must be at least one batch ({args.batch}).')
  return args


def timed_epoch(step, state, split, config, mesh, steps_in_flight):
  """(seconds of the epoch, seconds from the input's last batch to the epoch's end)."""
  input_done = []

  def batches():
    for b in augment.train_batches(
        split, config.batch_size, seed=0, epoch=1, flip=config.augment_flip,
        jitter=augment.Jitter.from_config(config)):
      yield mesh.shard_batch(train.step_batch(b))
    input_done.append(time.perf_counter())

  start = time.perf_counter()
  with tqdm.tqdm(disable=True) as bar:
    train.train_epoch(step, state, batches(), bar, steps_in_flight)
  end = time.perf_counter()
  return end - start, end - input_done[0]


def main(argv=None):
  args = parse_args(argv)
  config = base_config.load_get_config(CUSTOM_CONFIG)()
  config.image_size, config.batch_size = args.image_size, args.batch
  mesh = sharded.Mesh.create()
  sharded.check_batch_size(args.batch, mesh)
  rng = np.random.default_rng(0)
  images = args.images - args.images % args.batch
  split = batching.Split(
      'train', rng.integers(0, 256, (images, args.image_size, args.image_size, 3), np.uint8),
      rng.integers(0, 2, images).astype(np.int32), paths=[], source_dir='')
  model = networks.create_model(config)
  # Every epoch starts from the same state and draws the same batches: the same work each time.
  fresh_state = lambda: train.create_train_state(config, model, jax.random.PRNGKey(0),
                                                 steps_per_epoch=images // args.batch)
  step = train.jit_train_step(mesh, stop_base_gradient=False,
                              jitter=augment.Jitter.from_config(config))
  print(f'{cpu_model()}, {os.cpu_count()} CPUs, load average {load_average()} at start; '
        f'Python {platform.python_version()}, jax {jax.__version__}, {len(jax.devices())} x '
        f'{jax.devices()[0].platform}')
  print(f'configs/custom.py at {args.image_size} px, batch {args.batch}, {images} images an '
        f'epoch, jitter in the step; counts {args.counts}, {args.rounds} rounds', flush=True)

  seconds, _ = timed_epoch(step, fresh_state(), split, config, mesh, train.STEPS_IN_FLIGHT)
  print(f'warm-up epoch {seconds:.1f} s', flush=True)
  rates = {c: [] for c in args.counts}
  for round_index in range(args.rounds):
    shift = round_index % len(args.counts)
    for count in args.counts[shift:] + args.counts[:shift]:
      seconds, ahead = timed_epoch(step, fresh_state(), split, config, mesh, count)
      rates[count].append(images / seconds)
      print(f'round {round_index + 1} steps in flight {str(count):>4s}: {images / seconds:6.2f} '
            f'img/s, {seconds:6.1f} s, input ahead by {ahead:5.1f} s', flush=True)
  base = statistics.median(rates[args.counts[0]])
  for count, values in rates.items():
    median = statistics.median(values)
    print(f'steps in flight {str(count):>4s}: median {median:6.2f} img/s, '
          f'{median / base:.3f}x of {args.counts[0]}')


if __name__ == '__main__':
  process.apply()  # As the commands do, before JAX starts its backend.
  main()
