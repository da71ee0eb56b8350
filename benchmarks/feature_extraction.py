"""VGG16 feature extraction speed: gender_jax's jitted base against the same network in PyTorch.

Both sides take a batch of uint8 RGB images already on the device, apply the caffe preprocessing
(RGB -> BGR, minus the ImageNet means) and run the 13 convolutions and 5 pools of VGG16; the
weights are random (speed does not depend on them). Prints img/s per setting and the ratio
JAX / PyTorch, both measured in this run. Warm-up (compilation, cuDNN autotuning) is excluded.

  python benchmarks/feature_extraction.py                       # CPU, 112 and 224 px, fp32/bf16
  python benchmarks/feature_extraction.py --device=gpu --batch=256 --iters=20
  python benchmarks/feature_extraction.py --pipeline            # also sharded.extract_features
  python benchmarks/feature_extraction.py --layers --sizes=224   # each layer: direct vs Winograd
"""
import argparse
import json
import os
import statistics
import time

import numpy as np

from gender_jax import process

_CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--device', choices=('cpu', 'gpu'), default='cpu')
  parser.add_argument('--sizes', default='112,224', help='Image sizes in px, comma separated.')
  parser.add_argument('--dtypes', default='float32,bfloat16', help='Compute dtypes.')
  parser.add_argument('--batch', type=int, default=8, help='Images per forward pass.')
  parser.add_argument('--iters', type=int, default=3, help='Timed forward passes per setting.')
  parser.add_argument('--warmup', type=int, default=1, help='Untimed passes first (compiles).')
  parser.add_argument('--frameworks', default='jax,torch',
                      help="Which sides to run: jax (gender_jax's base as it runs), jax_direct "
                           "(the same with XLA's direct convolutions only, no Winograd), torch.")
  parser.add_argument('--pipeline', action='store_true',
                      help="Also time gender_jax.evaluation.extract_features over the device mesh, "
                           "the project's own path (host uint8 batches in, float32 numpy out).")
  parser.add_argument('--pipeline_images', type=int, default=0,
                      help='Images in the split the pipeline extracts (default: 4 batches).')
  parser.add_argument('--layers', action='store_true',
                      help="Instead: each of VGG16's distinct convolutions (with bias and ReLU) at "
                           "the first of --sizes, XLA's direct convolution against "
                           "gender_jax.models.winograd, and which one winograd.pays_off picks.")
  parser.add_argument('--json', default='', help='Also write the results to this file.')
  return parser.parse_args(argv)


def random_images(batch, size, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def time_interleaved(fns, warmup, iters):
  """Median seconds per call of each of `fns` ({name: blocking callable}).

  The callables take turns within each round, so load from other processes on a shared machine
  slows every side alike instead of whichever happened to run at the time.
  """
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in fns}
  for _ in range(iters):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------------------------------------
# JAX: the project's own model.
# ---------------------------------------------------------------------------------------------
def jax_classifier(dtype, winograd=None):
  """gender_jax's VGG16 classifier with caffe preprocessing and a compute dtype."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gender_jax.models import networks  # pylint: disable=g-import-not-at-top
  return networks.Classifier(base=networks.VGG16Base(dtype=jnp.dtype(dtype), winograd=winograd),
                           head=networks.DenseHead(), preprocessing='caffe_imagenet')


def jax_params(dtype):
  """Random base params ({'base': ...}, all encode needs); their shapes do not depend on size."""
  import jax  # pylint: disable=g-import-not-at-top
  base = jax_classifier(dtype).base
  return {'base': base.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))['params']}


def jax_extractor(size, dtype, batch, winograd=None):
  """A call of the jitted encode (preprocess + base) on a batch of device-resident images."""
  import jax  # pylint: disable=g-import-not-at-top
  model = jax_classifier(dtype, winograd)
  params = jax_params(dtype)
  encode = jax.jit(lambda p, x: model.apply({'params': p}, x, method='encode'))
  images = jax.device_put(random_images(batch, size))
  return lambda: encode(params, images).block_until_ready()


def pipeline_extractor(size, dtype, batch, num_images):
  """A call of sharded.extract_features on a split of `num_images` random uint8 images."""
  from gender_jax.training import sharded
  from gender_jax.data import batching  # pylint: disable=g-import-not-at-top
  model = jax_classifier(dtype)
  params = jax_params(dtype)
  mesh = sharded.Mesh.create()
  split = batching.Split(
      name='benchmark', images=random_images(num_images, size),
      labels=np.arange(num_images, dtype=np.int32) % 2,
      paths=[f'{i}.jpg' for i in range(num_images)], source_dir='')
  return lambda: sharded.extract_features(mesh, model.apply, {'params': params}, split, batch)


# ---------------------------------------------------------------------------------------------
# PyTorch: the same network built by hand (torchvision's vgg16().features has the same layers).
# ---------------------------------------------------------------------------------------------
def torch_vgg16_features():
  """VGG16's convolutional part as an nn.Sequential: 3x3 same convs + ReLU, 2x2/2 max-pools."""
  import torch  # pylint: disable=g-import-not-at-top
  from gender_jax.models import networks  # pylint: disable=g-import-not-at-top
  layers, channels = [], 3
  for block in networks.VGG16_BLOCKS:
    for features in block:
      layers += [torch.nn.Conv2d(channels, features, 3, padding=1), torch.nn.ReLU(inplace=True)]
      channels = features
    layers.append(torch.nn.MaxPool2d(2, 2))
  return torch.nn.Sequential(*layers)


def torch_load_jax_params(net, params):
  """Copies the Flax base's kernels (3, 3, in, out) and biases into the nn.Sequential."""
  import torch  # pylint: disable=g-import-not-at-top
  from gender_jax.models import networks  # pylint: disable=g-import-not-at-top
  convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
  for conv, name in zip(convs, networks.vgg16_layer_names()):
    kernel = np.array(params['base'][name]['kernel'], np.float32).transpose(3, 2, 0, 1)
    conv.weight.data.copy_(torch.from_numpy(kernel))
    conv.bias.data.copy_(torch.from_numpy(np.array(params['base'][name]['bias'], np.float32)))


def check_same_network(size=32):
  """Relative difference of the JAX and PyTorch features for the same weights and images."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  model = jax_classifier('float32')
  params = jax_params('float32')
  images = random_images(2, size, seed=1)
  ours = np.asarray(jax.jit(lambda p, x: model.apply({'params': p}, x, method='encode'))(
      params, images))
  net = torch_vgg16_features().eval()
  torch_load_jax_params(net, params)
  means = torch.tensor(_CAFFE_BGR_MEANS).view(1, 3, 1, 1)
  with torch.inference_mode():
    x = torch.from_numpy(images).permute(0, 3, 1, 2).flip(1).float() - means
    theirs = net(x).permute(0, 2, 3, 1).numpy()
  return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))


def torch_extractor(size, dtype, batch, device):
  """A call of uint8 NHWC -> caffe preprocessing -> channels_last VGG16 in eval mode."""
  import torch  # pylint: disable=g-import-not-at-top
  torch_device = 'cuda' if device == 'gpu' else 'cpu'
  net = torch_vgg16_features().eval().to(torch_device, memory_format=torch.channels_last)
  means = torch.tensor(_CAFFE_BGR_MEANS, device=torch_device).view(1, 3, 1, 1)
  images = torch.from_numpy(random_images(batch, size)).to(torch_device)
  autocast = torch.autocast(torch_device, dtype=torch.bfloat16, enabled=dtype == 'bfloat16')

  def run():
    with torch.inference_mode(), autocast:
      # NHWC uint8 viewed as NCHW is already channels_last; flip RGB -> BGR, subtract means.
      x = images.permute(0, 3, 1, 2).flip(1).float() - means
      out = net(x.contiguous(memory_format=torch.channels_last))
    if device == 'gpu':
      torch.cuda.synchronize()
    return out

  if device == 'gpu':
    torch.backends.cudnn.benchmark = True
  return run


# ---------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------
def versions(frameworks):
  import jax  # pylint: disable=g-import-not-at-top
  flags = os.environ.get('XLA_FLAGS', '').split()
  out = {'jax': jax.__version__, 'jax_devices': str(jax.devices()),
         'gender_jax_cpu_flags': process.CPU_XLA_FLAGS in flags}
  if 'torch' in frameworks:
    import torch  # pylint: disable=g-import-not-at-top
    out['torch'] = torch.__version__
    out['torch_threads'] = torch.get_num_threads()
    if torch.cuda.is_available():
      out['torch_device'] = torch.cuda.get_device_name()
  return out


def run(args):
  """Times every (size, dtype) setting on each framework; returns a list of result rows."""
  frameworks = args.frameworks.split(',')
  rows = []
  for size in [int(s) for s in args.sizes.split(',')]:
    for dtype in args.dtypes.split(','):
      fns, images = {}, {}
      if 'jax' in frameworks:
        fns['jax'], images['jax'] = jax_extractor(size, dtype, args.batch), args.batch
      if 'jax_direct' in frameworks:
        fns['jax_direct'] = jax_extractor(size, dtype, args.batch, winograd=False)
        images['jax_direct'] = args.batch
      if 'torch' in frameworks:
        fns['torch'] = torch_extractor(size, dtype, args.batch, args.device)
        images['torch'] = args.batch
      if args.pipeline:
        images['pipeline'] = args.pipeline_images or 4 * args.batch
        fns['pipeline'] = pipeline_extractor(size, dtype, args.batch, images['pipeline'])
      seconds = time_interleaved(fns, args.warmup, args.iters)
      row = {'size': size, 'dtype': dtype, 'batch': args.batch}
      row.update({f'{name}_img_s': images[name] / t for name, t in seconds.items()})
      if 'jax_img_s' in row and 'torch_img_s' in row:
        row['jax_over_torch'] = row['jax_img_s'] / row['torch_img_s']
      if 'jax_img_s' in row and 'jax_direct_img_s' in row:
        row['jax_over_direct'] = row['jax_img_s'] / row['jax_direct_img_s']
      rows.append(row)
      print(format_row(row), flush=True)
  return rows


def time_layers(args):
  """ms per call of each distinct VGG16 convolution + bias + ReLU: direct against Winograd."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gender_jax.models import networks
  from gender_jax.models import winograd  # pylint: disable=g-import-not-at-top
  size, rows, channels = int(args.sizes.split(',')[0]), [], 3
  rng = np.random.default_rng(0)
  for block in networks.VGG16_BLOCKS:
    for features in block:
      if rows and (rows[-1]['size'], rows[-1]['in']) == (size, features):
        continue  # A block's third convolution: the same as its second.
      x = jnp.asarray(rng.uniform(0, 1, (args.batch, size, size, channels)), jnp.float32)
      kernel = jnp.asarray(rng.standard_normal((3, 3, channels, features)) / 30, jnp.float32)
      bias = jnp.zeros(features)
      fns = {}
      for name, conv in (('direct', jax.lax.conv_general_dilated), ('winograd', winograd.conv3x3)):
        layer = jax.jit(lambda x, k, b, conv=conv: jax.nn.relu(
            conv(x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + b))
        fns[name] = lambda layer=layer: layer(x, kernel, bias).block_until_ready()
      seconds = time_interleaved(fns, args.warmup, args.iters)
      row = {'size': size, 'in': channels, 'out': features, 'batch': args.batch,
             'direct_ms': 1e3 * seconds['direct'], 'winograd_ms': 1e3 * seconds['winograd'],
             'picked': 'winograd' if winograd.pays_off(size, size, channels, features)
                       else 'direct'}
      rows.append(row)
      print(f"{size:4d} px {channels:4d} -> {features:4d} | direct {row['direct_ms']:8.1f} ms | "
            f"winograd {row['winograd_ms']:8.1f} ms | {seconds['direct'] / seconds['winograd']:.2f}x "
            f"| picked: {row['picked']}", flush=True)
      channels = features
    size //= 2
  return rows


def format_row(row):
  cells = [f"{row['size']:4d} px {row['dtype']:9s} batch {row['batch']:4d}"]
  for key, label in (('jax_img_s', 'jax'), ('jax_direct_img_s', 'jax_direct'),
                     ('torch_img_s', 'torch'), ('pipeline_img_s', 'pipeline')):
    if key in row:
      cells.append(f'{label} {row[key]:9.1f} img/s')
  for key, label in (('jax_over_torch', 'jax/torch'), ('jax_over_direct', 'jax/jax_direct')):
    if key in row:
      cells.append(f'{label} {row[key]:.2f}x')
  return ' | '.join(cells)


def main(argv=None):
  args = parse_args(argv)
  # Pick the JAX backend before jax is first imported.
  os.environ.setdefault('JAX_PLATFORMS', 'cuda' if args.device == 'gpu' else 'cpu')
  info = versions(args.frameworks.split(','))
  print(json.dumps(info))
  if 'torch' in args.frameworks and not args.layers:
    # A speed ratio only means something if both sides compute the same function.
    info['relative_difference'] = check_same_network()
    print(f"same network: JAX vs PyTorch features differ by {info['relative_difference']:.1e}")
    if info['relative_difference'] > 1e-3:
      raise SystemExit('JAX and PyTorch VGG16 disagree; the comparison would be meaningless.')
  rows = time_layers(args) if args.layers else run(args)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'args': vars(args), 'versions': info, 'results': rows}, f, indent=1)
  return rows


if __name__ == '__main__':
  process.apply()  # As the commands do, before JAX starts its backend.
  main()
