"""3x3 'SAME' convolutions by Winograd's F(2x2, 3x3): 2.25x fewer multiplications, for XLA:CPU.

XLA:CPU's direct convolutions already run VGG16 near the cores' peak (AVX2: about 160 of 190
GFLOP/s), so only fewer multiplications make its frozen base faster. Each 4x4 input tile and
each kernel is transformed (sums and differences), the transformed tiles meet the kernels in
16 batched dots, and 2x2 output tiles come back by a last transform (Lavin and Gray, "Fast
Algorithms for Convolutional Neural Networks", 2015). The result equals the direct
convolution up to float rounding (about 1e-6 relative in float32). Measured per VGG16 layer in
benchmarks/RESULTS.md#winograd: faster where the dots dominate the transforms (wide layers on maps
of 28 px or more) on two AMD EPYCs and an Intel Xeon, slower elsewhere; on the Xeon it won only once
its dots left YNNPACK for Eigen (gender_jax.process.CPU_XLA_FLAGS). So `pays_off` times both on the
machine at hand, once, and keeps the times for every later process.
"""
import functools
import importlib.metadata
import json
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

import gender_jax

# F(2x2, 3x3): input transform B^T, kernel transform G, output transform A^T.
_B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
_A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])
_TILE, _OUT = _B_T.shape[0], _A_T.shape[0]  # 4x4 input tiles give 2x2 output tiles.


_TIMING_BATCH, _TIMING_REPEATS = 8, 3  # Pieces of 8 images: how evaluation runs 224 px on CPU.
# (file, machine, layer) -> times: the file is read once per layer, and a cache folder that
# cannot be written still times each layer once per process.
_timings = {}


def pays_off(height, width, in_channels, features):
  """Whether F(2x2, 3x3) beats XLA's direct convolution for this layer on this machine.

  Narrower layers and maps under 28 px lost on every CPU measured, so they stay direct untimed;
  the others are timed both ways once per machine (`layer_timings`). With several processes all
  stay direct: each process compiles the same program only if none chooses by its own clock.
  """
  if min(height, width) < 28 or in_channels < 64 or features < 128 or jax.process_count() > 1:
    return False
  times = layer_timings(height, width, in_channels, features)
  return times['winograd_ms'] < times['direct_ms']


def timings_path():
  return gender_jax.cache_dir('convolution_timings.json')


def machine():
  """What convolution times depend on: the processor, the cores this process may use, jaxlib
  and the XLA flags (which pick the convolutions' library)."""
  flags = ' '.join(os.environ.get('XLA_FLAGS', '').split())
  return f'{_hardware_and_jaxlib()}, XLA_FLAGS={flags!r}'


@functools.cache
def _hardware_and_jaxlib():
  """The part of `machine` a process cannot change: read once, not at every layer of a trace."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')),
                 '')
  except OSError:
    cpu = ''
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  jaxlib = importlib.metadata.version('jaxlib')
  return (f'{cpu or platform.processor() or platform.machine()}, {cores} cores, '
          f'{jax.default_backend()}, jaxlib {jaxlib}')


def layer_timings(height, width, in_channels, features):
  """{'direct_ms', 'winograd_ms'} of this layer (with its ReLU) on a batch of 8 on this machine.

  Timed the first time a layer of this shape is asked for on this machine and kept in
  `timings_path()`, a JSON file a person can read: {machine: {layer: times}}.
  """
  path, here, key = timings_path(), machine(), f'{height}x{width}x{in_channels}->{features}'
  if (path, here, key) not in _timings:
    times = _read(path).get(here, {}).get(key)
    if times is None:
      times = time_layer(height, width, in_channels, features)
      everything = _read(path)  # Again: another process may have timed other layers meanwhile.
      everything.setdefault(here, {})[key] = times
      _write(path, everything)
    _timings[path, here, key] = times
  return _timings[path, here, key]


def time_layer(height, width, in_channels, features):
  """Milliseconds per call of the direct and the Winograd convolution, taking turns (best of 3)."""
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (_TIMING_BATCH, height, width, in_channels)).astype(np.float32)
  kernel = (rng.standard_normal((3, 3, in_channels, features)) / 30).astype(np.float32)
  layers = {}
  for name, conv in (('direct', jax.lax.conv_general_dilated), ('winograd', conv3x3)):
    layer = jax.jit(lambda x, k, conv=conv: jax.nn.relu(conv(
        x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))))
    # Compiled ahead of time and called on numpy arrays: this runs while a model is traced.
    layers[name] = layer.lower(x, kernel).compile()
  best = {name: float('inf') for name in layers}
  desc = f'Timing 3x3 convolutions {height}x{width}x{in_channels}->{features} (once on this machine)'
  with tqdm.tqdm(total=2 * (_TIMING_REPEATS + 1), desc=desc, leave=False) as bar:
    for repeat in range(_TIMING_REPEATS + 1):  # The first call of each is a warm-up.
      for name, layer in layers.items():
        start = time.perf_counter()
        layer(x, kernel).block_until_ready()
        if repeat:
          best[name] = min(best[name], time.perf_counter() - start)
        bar.update()
  return {f'{name}_ms': round(1e3 * seconds, 2) for name, seconds in best.items()}


def _read(path):
  try:
    with open(path, encoding='utf-8') as f:
      everything = json.load(f)
  except (OSError, ValueError):  # None yet, or unreadable: time again.
    return {}
  return everything if isinstance(everything, dict) else {}


def _write(path, everything):
  """Replaces the file whole (a reader never sees half of it); where it cannot be written, the
  times live for this process only."""
  folder = os.path.dirname(path)
  try:
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, suffix='.tmp')
  except OSError:
    return
  try:
    with os.fdopen(handle, 'w', encoding='utf-8') as f:
      json.dump(everything, f, indent=1, sort_keys=True)
    os.replace(temporary, path)
  except OSError:
    os.remove(temporary)


def _combine(matrix, terms):
  """matrix @ terms for a matrix of 0 and +-1 (B^T, A^T), terms a list of arrays: sums and
  differences, which XLA fuses into one pass."""
  rows = []
  for coefficients in matrix:
    row = None
    for coefficient, term in zip(coefficients, terms):
      if coefficient:
        term = term if coefficient == 1 else -term
        row = term if row is None else row + term
    rows.append(row)
  return rows


def conv3x3(inputs, kernel, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
            dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated`'s signature, for `nn.Conv(conv_general_dilated=...)`.

  Takes only what VGG16's convolutions are: NHWC inputs, a 3x3 HWIO kernel, stride 1, 'SAME'
  padding, no dilation, no groups.
  """
  del dimension_numbers, precision  # nn.Conv's NHWC/HWIO defaults; float32 as given.
  undilated = all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
  if (kernel.shape[:2] != (3, 3) or tuple(window_strides) != (1, 1) or padding != 'SAME'
      or not undilated or feature_group_count != 1):
    raise ValueError('winograd.conv3x3 computes 3x3 convolutions with stride 1, SAME padding, '
                     'no dilation and no groups only.')
  n, h, w, c = inputs.shape
  features = kernel.shape[-1]
  g = jnp.asarray(_G, kernel.dtype)
  kernels = jnp.einsum('ai,ijcf,bj->abcf', g, kernel, g).reshape(_TILE**2, c, features)

  rows, cols = -(-h // _OUT), -(-w // _OUT)  # Output tiles; odd sizes are padded, then cut.
  padded = jnp.pad(inputs, ((0, 0), (1, _OUT * rows + 1 - h), (1, _OUT * cols + 1 - w), (0, 0)))
  tile = [[padded[:, i:i + _OUT * rows:_OUT, j:j + _OUT * cols:_OUT] for j in range(_TILE)]
          for i in range(_TILE)]  # tile[i][j]: element (i, j) of every input tile.
  half = [_combine(_B_T, [tile[i][j] for i in range(_TILE)]) for j in range(_TILE)]
  tiles = [_combine(_B_T, [half[j][p] for j in range(_TILE)]) for p in range(_TILE)]
  tiles = jnp.stack([tiles[p][q] for p in range(_TILE) for q in range(_TILE)])

  products = jnp.einsum('tnhwc,tcf->tnhwf', tiles, kernels)
  products = products.reshape(_TILE, _TILE, n, rows, cols, features)
  half = [_combine(_A_T, [products[p, q] for q in range(_TILE)]) for p in range(_TILE)]
  out = [[_combine(_A_T, [half[p][s] for p in range(_TILE)])[r] for s in range(_OUT)]
         for r in range(_OUT)]  # out[r][s]: element (r, s) of every output tile.
  out = jnp.stack([jnp.stack(out[r], axis=3) for r in range(_OUT)], axis=2)
  return out.reshape(n, _OUT * rows, _OUT * cols, features)[:, :h, :w]
