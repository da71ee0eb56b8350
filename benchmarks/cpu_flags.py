"""XLA:CPU flags against the default, on gender_jax's own training step and VGG16 forward pass.

  python benchmarks/cpu_flags.py [--rounds=3] [--steps=10]

Each setting runs in its own process (XLA reads its flags once, at start), the settings
alternating round by round so a busy machine slows them alike. A round times `--steps` jitted
training steps of configs/custom.py's CNN (80 px, BatchNorm, batch 64) after two warm-up steps,
and the frozen VGG16 base's forward pass at 112 and 224 px (batch 32). It also reports how far
one training step's params move from the default's (the flags change rounding, not the model).
Settings: gender_jax's CPU default (gender_jax/process.py: CPU_XLA_FLAGS), and no flags at all
(GENDER_JAX_CPU_DEFAULTS=0).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

SETTINGS = {'none': {'GENDER_JAX_CPU_DEFAULTS': '0'}, 'gender_jax': {}}

WORKER = r'''
import json, sys, time
import numpy as np
from gender_jax import process
process.apply()  # As the commands do; GENDER_JAX_CPU_DEFAULTS=0 turns it off.
import jax, jax.numpy as jnp
from configs import custom
from gender_jax.models import networks
from gender_jax.training import sharded
from gender_jax.training import train

steps = int(sys.argv[1])
config = custom.get_config()
model = networks.create_model(config)
mesh = sharded.Mesh.create()
state = train.create_train_state(config, model, jax.random.PRNGKey(0), steps_per_epoch=100)
step = train.jit_train_step(mesh, stop_base_gradient=False)
rng = np.random.default_rng(0)
batch = mesh.shard_batch({'image': rng.integers(0, 256, (64, 80, 80, 3), np.uint8),
                          'label': rng.integers(0, 2, 64).astype(np.int32)})
state, _ = step(state, batch)  # Compiles; its params are compared across settings.
first = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(state.params))])
state, _ = step(state, batch)  # The heap grows to its working size (malloc keeps it after).
jax.block_until_ready(state)
start = time.perf_counter()
for _ in range(steps):
  state, sums = step(state, batch)
jax.block_until_ready(sums)
out = {'train_img_s': 64 * steps / (time.perf_counter() - start)}
base = networks.VGG16Base()
for size in (112, 224):
  images = jnp.asarray(rng.integers(0, 256, (32, size, size, 3)).astype(np.float32))
  params = base.init(jax.random.PRNGKey(0), images[:1])
  forward = jax.jit(base.apply)
  forward(params, images).block_until_ready()
  start = time.perf_counter()
  for _ in range(3):
    forward(params, images).block_until_ready()
  out[f'vgg16_{size}_img_s'] = 32 * 3 / (time.perf_counter() - start)
np.save(sys.argv[2], first)
print(json.dumps(out))
'''

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # Workers import configs/ here.


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=10)
  args = parser.parse_args()
  results = {name: [] for name in SETTINGS}
  with tempfile.TemporaryDirectory(prefix='cpu_flags_') as scratch:
    for round_index in range(args.rounds):
      for name, env in SETTINGS.items():
        path = os.path.join(scratch, f'{name}.npy')
        done = subprocess.run([sys.executable, '-c', WORKER, str(args.steps), path], cwd=REPO,
                              env={**os.environ, **env, 'JAX_PLATFORMS': 'cpu'},
                              capture_output=True, text=True, check=True)
        results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f'round {round_index + 1} {name:10s} {results[name][-1]}', flush=True)
    import numpy as np  # pylint: disable=g-import-not-at-top
    drift = float(np.max(np.abs(np.load(os.path.join(scratch, 'gender_jax.npy')) -
                                np.load(os.path.join(scratch, 'none.npy')))))
  print(f'\nmedian over {args.rounds} rounds (img/s), and the ratio to no flags:')
  for key in results['none'][0]:
    none = statistics.median(r[key] for r in results['none'])
    ours = statistics.median(r[key] for r in results['gender_jax'])
    print(f'  {key:18s} none {none:8.1f}   gender_jax {ours:8.1f}   {ours / none:.2f}x')
  print(f'max |param difference| after one training step: {drift:.2e}')


if __name__ == '__main__':
  main()
