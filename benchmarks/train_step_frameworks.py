"""The custom CNN's training step in gender_jax (JAX), PyTorch and Keras/TensorFlow, side by side.

  python benchmarks/train_step_frameworks.py [--rounds=3] [--steps=20] [--image_size=80] \
      [--batch=64] [--frameworks=jax,torch,keras] [--keras_python=VENV/bin/python] \
      [--epoch_images=5000]

The model is configs/custom.py's: uint8 RGB images scaled to 0..1, four blocks of one 3x3
'same' convolution (no bias) + BatchNorm (momentum 0.9, epsilon 1e-5) + ReLU + 2x2 max-pool with
32/64/128/256 channels, then flatten -> Dense(256) + ReLU -> Dropout(0.5) -> Dense(1) logit,
sigmoid binary cross-entropy, Adam lr 1e-3 (epsilon 1e-8). Each side:
- jax: gender_jax itself, `train.create_train_state` and `train.jit_train_step` on the
  `sharded.Mesh` of the CPU, with gender_jax's XLA:CPU defaults (configs/custom.py, its image
  size and batch overridden; its cosine schedule and 'correct' count included, as in training).
- torch: torch.nn built by hand, channels_last memory format (the faster layout of PyTorch's
  oneDNN convolutions on CPU; NCHW is not timed), `torch.set_num_threads(os.cpu_count())`,
  `BCEWithLogitsLoss`, `torch.optim.Adam`; the flatten reads channels last, as Flax and Keras do.
- keras: keras.layers (channels_last) compiled with Adam and `BinaryCrossentropy(from_logits=
  True)`, Keras' own defaults otherwise (its `jit_compile` choice is reported), timed through
  `model.train_on_batch` on tensors already made. Runs in a separate TensorFlow interpreter
  (--keras_python or $KERAS_PYTHON; benchmarks/README.md says how to make one), skipped without.

Every framework runs in a fresh process per round (no shared thread pools, each its own
imports), the frameworks taking turns within a round and the turn order rotating round by round,
so a busy machine slows them alike. A process builds the model, makes one fixed random batch
(uint8 images, 0/1 labels; each model scales the images inside its step), runs 2 warm-up steps
(compilation, tracing), then times --steps steps and prints one JSON line: img/s, wall seconds,
process CPU seconds (`time.process_time`, all threads) over the timed steps, and the trainable
parameter count (BatchNorm's running statistics are not parameters). The counts must agree.

With --epoch_images=N a process instead trains whole epochs over N random images held in memory
(rounded down to whole batches), each through its framework's own loop, shuffled, without
augmentation: gender_jax's `augment.train_batches` through `train.train_epoch`, a PyTorch
`DataLoader` (shuffle, in-process), Keras' `model.fit` on numpy arrays. One epoch warms up, the
next is timed.

Prints one line per round and framework, then the medians over rounds and each framework's
img/s as a multiple of gender_jax's (measured in this run), with machine and versions.
"""
import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # Workers import configs/ here.

WARMUP = 2  # Untimed steps: compilation (XLA), tracing (tf.function), oneDNN primitive caches.
PARAM_TOLERANCE = 4  # Parameter counts of the frameworks may differ by at most this much.

# Each worker is run as `python -c WORKER steps image_size batch warmup epoch_images` and prints
# JSON last; epoch_images 0 times --steps steps of one batch, else a whole epoch.
JAX_WORKER = r'''
import importlib.metadata, json, os, sys, time
import numpy as np
from gender_jax import process
process.apply()  # As the commands do, before JAX starts its backend.
import jax
import tqdm
from configs import custom
from gender_jax.data import augment
from gender_jax.data import batching
from gender_jax.models import networks
from gender_jax.training import sharded
from gender_jax.training import train

steps, size, batch_size, warmup, epoch_images = map(int, sys.argv[1:6])
config = custom.get_config()
config.image_size, config.batch_size = size, batch_size
model = networks.create_model(config)
mesh = sharded.Mesh.create()
sharded.check_batch_size(batch_size, mesh)
state = train.create_train_state(config, model, jax.random.PRNGKey(0), steps_per_epoch=100)
step = train.jit_train_step(mesh, stop_base_gradient=False)
rng = np.random.default_rng(0)
if epoch_images:
  split = batching.Split(
      'train', rng.integers(0, 256, (epoch_images, size, size, 3), np.uint8),
      rng.integers(0, 2, epoch_images).astype(np.int32), paths=[], source_dir='')

  def batches(epoch):  # As train.py feeds its step, without augmentation.
    for b in augment.train_batches(split, batch_size, seed=0, epoch=epoch, flip=False):
      yield mesh.shard_batch({'image': b['image'], 'label': b['label']})

  warmup_batches, timed_batches = batches(0), batches(1)
else:
  batch = mesh.shard_batch({
      'image': rng.integers(0, 256, (batch_size, size, size, 3), np.uint8),
      'label': rng.integers(0, 2, batch_size).astype(np.int32)})
  warmup_batches, timed_batches = [batch] * warmup, [batch] * steps
for batch in warmup_batches:
  state, sums = step(state, batch)
first_loss = float(sums['loss'] / sums['count'])
jax.block_until_ready(state)
cpu, wall = time.process_time(), time.perf_counter()
if epoch_images:  # train.py's own epoch loop.
  state, sums = train.train_epoch(step, state, timed_batches, tqdm.tqdm(disable=True))
  images = epoch_images
else:
  for batch in timed_batches:
    state, sums = step(state, batch)
  images = batch_size * steps
jax.block_until_ready((state, sums))
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({
    'img_s': images / wall, 'wall_s': wall, 'cpu_s': cpu,
    'params': train.count_params(state.params), 'loss_warmup': first_loss,
    'loss_last': float(sums['loss'] / sums['count']),
    'devices': f'{len(jax.devices())} x {jax.devices()[0].platform}',
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
    'version': f'jax {jax.__version__}, jaxlib {importlib.metadata.version("jaxlib")}'}))
'''

TORCH_WORKER = r'''
import json, os, sys, time
import numpy as np
import torch
from torch import nn

steps, size, batch_size, warmup, epoch_images = map(int, sys.argv[1:6])
torch.set_num_threads(os.cpu_count())
torch.manual_seed(0)


class ChannelsLastFlatten(nn.Module):
  """NCHW (stored channels last) -> (N, H*W*C), the order of Flax's and Keras' Flatten."""

  def forward(self, x):
    return x.permute(0, 2, 3, 1).flatten(1)  # A view: the memory already is NHWC.


layers, channels, side = [], 3, size
for features in (32, 64, 128, 256):
  # Torch's momentum weighs the new batch: 0.1 here is Flax's and Keras' 0.9.
  layers += [nn.Conv2d(channels, features, 3, padding=1, bias=False),
             nn.BatchNorm2d(features, eps=1e-5, momentum=0.1), nn.ReLU(inplace=True),
             nn.MaxPool2d(2)]
  channels, side = features, side // 2
layers += [ChannelsLastFlatten(), nn.Linear(side * side * channels, 256), nn.ReLU(inplace=True),
           nn.Dropout(0.5), nn.Linear(256, 1)]
model = nn.Sequential(*layers).to(memory_format=torch.channels_last).train()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8)
loss_fn = nn.BCEWithLogitsLoss()
rng = np.random.default_rng(0)
n = epoch_images or batch_size
data = (torch.from_numpy(rng.integers(0, 256, (n, size, size, 3), np.uint8)),
        torch.from_numpy(rng.integers(0, 2, n).astype(np.float32)))
if epoch_images:
  loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data),
                                       batch_size=batch_size, shuffle=True, drop_last=True)
  warmup_batches, timed_batches = loader, loader  # Each pass is an epoch.
else:
  warmup_batches, timed_batches = [data] * warmup, [data] * steps


def step(images, labels):
  optimizer.zero_grad(set_to_none=True)
  # uint8 NHWC viewed as NCHW is channels_last already; float() keeps that layout.
  x = images.permute(0, 3, 1, 2).float().div_(255.0)
  loss = loss_fn(model(x)[:, 0], labels)
  loss.backward()
  optimizer.step()
  return loss


for images, labels in warmup_batches:
  loss = step(images, labels)
first_loss = float(loss)
cpu, wall, seen = time.process_time(), time.perf_counter(), 0
for images, labels in timed_batches:
  loss = step(images, labels)
  seen += len(labels)
last_loss = float(loss)  # CPU ops run eagerly: done when step() returns; this syncs anyway.
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({
    'img_s': seen / wall, 'wall_s': wall, 'cpu_s': cpu,
    'params': sum(p.numel() for p in model.parameters() if p.requires_grad),
    'loss_warmup': first_loss, 'loss_last': last_loss,
    'threads': torch.get_num_threads(), 'memory_format': 'channels_last',
    'version': f'torch {torch.__version__}'}))
'''

KERAS_WORKER = r'''
import json, os, sys, time
os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import numpy as np
import tensorflow as tf
import keras

steps, size, batch_size, warmup, epoch_images = map(int, sys.argv[1:6])
keras.utils.set_random_seed(0)
inputs = keras.Input((size, size, 3), dtype='uint8')
x = keras.layers.Rescaling(1 / 255)(inputs)  # Casts to float32, then scales.
for features in (32, 64, 128, 256):
  x = keras.layers.Conv2D(features, 3, padding='same', use_bias=False)(x)
  x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.MaxPooling2D(2)(x)
x = keras.layers.Flatten()(x)
x = keras.layers.Dense(256, activation='relu')(x)
x = keras.layers.Dropout(0.5)(x)
model = keras.Model(inputs, keras.layers.Dense(1)(x))
model.compile(optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-8),
              loss=keras.losses.BinaryCrossentropy(from_logits=True))
rng = np.random.default_rng(0)
n = epoch_images or batch_size
images = rng.integers(0, 256, (n, size, size, 3), np.uint8)
labels = rng.integers(0, 2, (n, 1)).astype(np.float32)


def epoch():  # Keras' own loop; the loss it reports is the epoch's mean.
  return model.fit(images, labels, batch_size=batch_size, epochs=1, shuffle=True,
                   verbose=0).history['loss'][-1]


if epoch_images:
  first_loss = epoch()
else:
  images, labels = tf.constant(images), tf.constant(labels)
  for _ in range(warmup):
    first_loss = model.train_on_batch(images, labels)  # Returns numpy: the step has finished.
cpu, wall = time.process_time(), time.perf_counter()
if epoch_images:
  loss = epoch()
else:
  for _ in range(steps):
    loss = model.train_on_batch(images, labels)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({
    'img_s': (n if epoch_images else batch_size * steps) / wall, 'wall_s': wall, 'cpu_s': cpu,
    'params': int(sum(np.prod(w.shape) for w in model.trainable_weights)),
    'loss_warmup': float(first_loss), 'loss_last': float(loss),
    'jit_compile': model.jit_compile,
    'threads': {'intra_op': tf.config.threading.get_intra_op_parallelism_threads(),
                'inter_op': tf.config.threading.get_inter_op_parallelism_threads()},
    'version': f'tensorflow {tf.__version__}, keras {keras.__version__}'}))
'''

WORKERS = {'jax': JAX_WORKER, 'torch': TORCH_WORKER, 'keras': KERAS_WORKER}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=20, help='Timed training steps per round.')
  parser.add_argument('--image_size', type=int, default=80)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--frameworks', default='jax,torch,keras',
                      help='Comma separated, of jax, torch, keras; jax is the baseline.')
  parser.add_argument('--keras_python', default=os.environ.get('KERAS_PYTHON', ''),
                      help='A Python with tensorflow and keras (default: $KERAS_PYTHON).')
  parser.add_argument('--epoch_images', type=int, default=0,
                      help='Time a whole epoch over this many images (the CelebA train split: '
                           '5000) instead of --steps steps of one batch.')
  args = parser.parse_args(argv)
  args.frameworks = [f for f in args.frameworks.split(',') if f]
  unknown = sorted(set(args.frameworks) - set(WORKERS))
  if unknown:
    parser.error(f'unknown frameworks {unknown}; expected some of {sorted(WORKERS)}')
  if args.image_size < 16:
    parser.error('--image_size must be at least 16 (four 2x2 max-pools).')
  if args.epoch_images < 0 or 0 < args.epoch_images < args.batch:
    parser.error(f'--epoch_images must be 0 (steps) or at least one batch ({args.batch}).')
  args.epoch_images -= args.epoch_images % args.batch  # Whole batches on every side.
  return args


def cpu_model():
  """The CPU's model name, with its family and model numbers where /proc/cpuinfo has them: a
  VM's name alone (such as 'Intel(R) Xeon(R) Processor') does not tell CPUs apart."""
  fields = {}
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if not line.strip():
          break  # The first processor's block: all are alike.
        key, _, value = line.partition(':')
        fields[key.strip()] = value.strip()
  except OSError:
    pass
  name = fields.get('model name') or platform.processor() or platform.machine()
  if 'cpu family' in fields and 'model' in fields:
    name += f" (family {fields['cpu family']}, model {fields['model']})"
  return name


def load_average():
  return ' '.join(f'{x:.2f}' for x in os.getloadavg())


def version(package):
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return 'not installed'


def run_worker(name, python, args):
  """One fresh process timing one framework; its JSON result."""
  env = {**os.environ}
  if name == 'jax':
    env['JAX_PLATFORMS'] = 'cpu'
  done = subprocess.run(
      [python, '-c', WORKERS[name], str(args.steps), str(args.image_size), str(args.batch),
       str(WARMUP), str(args.epoch_images)], cwd=REPO, env=env, capture_output=True, text=True,
      check=False)
  if done.returncode:
    sys.stderr.write(done.stderr[-4000:])
    raise SystemExit(f'The {name} worker ({python}) failed with exit code {done.returncode}.')
  result = json.loads(done.stdout.strip().splitlines()[-1])
  result['cores_busy'] = result['cpu_s'] / result['wall_s']
  return result


def check_params(results):
  counts = {name: runs[0]['params'] for name, runs in results.items() if runs}
  if max(counts.values()) - min(counts.values()) > PARAM_TOLERANCE:
    raise SystemExit(f'The models differ in size: trainable parameters {counts}.')
  return counts


def main(argv=None):
  args = parse_args(argv)
  pythons = {'jax': sys.executable, 'torch': sys.executable, 'keras': args.keras_python}
  frameworks = list(args.frameworks)
  if 'keras' in frameworks and not args.keras_python:
    print('keras: skipped (no --keras_python and no KERAS_PYTHON: a Python with tensorflow '
          'and keras, see benchmarks/README.md).')
    frameworks.remove('keras')
  if not frameworks:
    raise SystemExit('No framework left to time.')
  print(f'{cpu_model()}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), '
        f'load average {load_average()} at start; Python {platform.python_version()}')
  print(f'jax {version("jax")}, jaxlib {version("jaxlib")}, flax {version("flax")}, '
        f'optax {version("optax")}, torch {version("torch")}')
  timed = (f'one timed epoch of {args.epoch_images} images after one warm-up epoch'
           if args.epoch_images else f'{args.steps} timed steps after {WARMUP} warm-up steps')
  print(f'image_size {args.image_size}, batch {args.batch}, {timed}, {args.rounds} rounds; '
        f'frameworks {",".join(frameworks)}', flush=True)

  results = {name: [] for name in frameworks}
  for round_index in range(args.rounds):
    shift = round_index % len(frameworks)
    for name in frameworks[shift:] + frameworks[:shift]:
      r = run_worker(name, pythons[name], args)
      results[name].append(r)
      extra = {k: v for k, v in r.items()
               if k not in ('img_s', 'wall_s', 'cpu_s', 'cores_busy', 'params', 'loss_warmup',
                            'loss_last') and (round_index == 0 or k != 'version')}
      print(f'round {round_index + 1} {name:6s} {r["img_s"]:8.1f} img/s  wall {r["wall_s"]:7.3f} s'
            f'  cpu {r["cpu_s"]:7.3f} s ({r["cores_busy"]:.2f} cores)  params {r["params"]}'
            f'  loss {r["loss_warmup"]:.4f} -> {r["loss_last"]:.4f}  {json.dumps(extra)}',
            flush=True)
    if round_index == 0:
      counts = check_params(results)

  print(f'\nload average {load_average()} at the end')
  print(f'trainable parameters: {counts}')
  baseline = (statistics.median(r['img_s'] for r in results['jax'])
              if 'jax' in results else None)
  print(f'\nmedian over {args.rounds} rounds; "x jax": img/s as a multiple of gender_jax\'s '
        f'(above 1: faster than gender_jax)')
  print(f'  {"framework":10s} {"img/s":>8s} {"wall s":>8s} {"cpu s":>8s} {"cores":>6s} '
        f'{"x jax":>6s}')
  for name, runs in results.items():
    img_s = statistics.median(r['img_s'] for r in runs)
    ratio = f'{img_s / baseline:6.2f}' if baseline else f'{"-":>6s}'
    print(f'  {name:10s} {img_s:8.1f} {statistics.median(r["wall_s"] for r in runs):8.3f} '
          f'{statistics.median(r["cpu_s"] for r in runs):8.3f} '
          f'{statistics.median(r["cores_busy"] for r in runs):6.2f} {ratio}')
  for name, runs in results.items():
    print(f'{name}: {runs[0]["version"]}')


if __name__ == '__main__':
  main()
