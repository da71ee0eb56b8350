"""Face detection speed: gender_jax.faces.detect against facenet-pytorch's MTCNN, same photos.

Both sides run MTCNN with the same weights and defaults on the same uint8 photos and return
boxes, scores and landmarks; they take turns within each round (so load from other processes
slows both alike), and the first round, which compiles, is not timed. Prints photos/s per
setting and the ratio gender_jax / facenet-pytorch, and checks that both found the same faces.
The gender_jax side also aligns each photo's largest face onto a template at 80 px, as the
dataset build and predict do, so its rate is detection + alignment.
Settings: CelebA crops (89x109) and UTKFace chips (200x200) in batches of --batch photos, and the
UTKFace chips one at a time (as `predict` meets photos).

Where torchvision's C++ ops do not load (PyPI's CUDA torchvision beside a CPU torch), the NMS
facenet-pytorch calls is tests/facenet_reference.py's numpy transcription; its time is measured
and the facenet-pytorch rate without it is printed too (the C++ kernel would take less).

With --host it measures instead the face finder's host work alone (`host_rates`), now and as it
was before issue 33 moved the cascade's steps between the networks onto the device (commit
BEFORE, read with git), on the same photos one at a time (as the dataset build finds them) and
in batches. The device work is taken out by replaying it: a first pass runs the detector with
each of its module's jitted functions run to completion, timed (the device seconds shown) and
its results recorded; then each call returns the recorded results in turn, after handing the
call's arrays to a jitted no-op, so dispatch's host side (argument handling, copies to the
device) still counts. The host seconds are the main thread's CPU time, so other processes on
the machine slow them little. benchmarks/host_feed.py prints the `slowest` setting's rate.

  python benchmarks/face_detection.py --images=64 --rounds=2      # a quick check
  python benchmarks/face_detection.py --images=1024 --rounds=3 --json=face_detection.json
  python benchmarks/face_detection.py --host --images=256 --rounds=3
"""
import argparse
import collections
import contextlib
import cProfile
import importlib.util
import json
import os
import pathlib
import platform
import pstats
import subprocess
import sys
import tempfile
import time
import types

import jax
import numpy as np

from gender_jax import process
from PIL import Image

_REPO = pathlib.Path(__file__).resolve().parents[1]
CELEBA_DIR = str(_REPO.parent / 'shared/data/celeba_gender')
UTKFACE_DIR = str(_REPO.parent / 'shared/data/utkface_sample')


BEFORE = '143e5f1'  # The last commit whose face finder ran the steps between networks in numpy.
HOST_SETTINGS = (1, 64)  # Photos per detect() call: one at a time (the dataset build), a batch.

# configs/custom.py's template on the CelebA faces (the run's config.json has the derived one).
TEMPLATE = np.array([[0.364, 0.485], [0.649, 0.484], [0.502, 0.660], [0.378, 0.788],
                     [0.633, 0.787]], np.float32)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--celeba_dir', default=CELEBA_DIR)
  parser.add_argument('--utkface_dir', default=UTKFACE_DIR)
  parser.add_argument('--images', type=int, default=256, help='Photos per source.')
  parser.add_argument('--batch', type=int, default=64, help='Photos per detect() call.')
  parser.add_argument('--rounds', type=int, default=3, help='Timed rounds (plus one warm-up).')
  parser.add_argument('--weights', default='', help='A converted mtcnn folder (default: convert '
                                                     "the installed facenet-pytorch's files).")
  parser.add_argument('--torch_threads', type=int, default=0,
                      help='torch.set_num_threads (0: torch default). On a busy machine 1 can '
                           'be much faster: torch threads then wait for each other.')
  parser.add_argument('--json', default='', help='Also write the results to this file.')
  parser.add_argument('--host', action='store_true',
                      help="Only the face finder's host work, now and before issue 33.")
  return parser.parse_args(argv)


def load_photos(folder, count):
  paths = sorted(pathlib.Path(folder).glob('**/*.jpg'))
  if not paths:
    sys.exit(f'no photos under {folder}')
  step = max(1, len(paths) // count)
  return np.stack([np.asarray(Image.open(p).convert('RGB')) for p in paths[::step][:count]])


def import_facenet_reference():
  """tests/facenet_reference.py, loaded from its file (tests/ is not a package)."""
  spec = importlib.util.spec_from_file_location('facenet_reference',
                                                _REPO / 'tests' / 'facenet_reference.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def converted_weights(folder):
  if folder:
    return folder
  from weights_convert import mtcnn  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(tempfile.mkdtemp()) / 'mtcnn'
  data = pathlib.Path(importlib.util.find_spec('facenet_pytorch').origin).parent / 'data'
  mtcnn.convert_mtcnn(out, pt_dir=data)
  return out


def detect_module(commit=None):
  """gender_jax.faces.detect, or its source at `commit` (git show) imported apart."""
  from gender_jax.faces import detect  # pylint: disable=g-import-not-at-top
  if commit is None:
    return detect
  path = 'gender_jax/faces/detect.py'
  source = subprocess.run(['git', 'show', f'{commit}:{path}'], cwd=_REPO, check=True,
                          capture_output=True, text=True).stdout
  module = types.ModuleType(f'detect_{commit}')
  module.__file__ = f'{commit}:{path}'
  exec(compile(source, f'{commit}:{path}', 'exec'), vars(module))  # pylint: disable=exec-used
  return module


@contextlib.contextmanager
def _jitted_replaced(module, make):
  """Each jitted function of `module` replaced by make(name, function) while inside."""
  jitted = {name: f for name, f in vars(module).items() if callable(f) and hasattr(f, 'lower')}
  for name, f in jitted.items():
    setattr(module, name, make(name, f))
  try:
    yield
  finally:
    for name, f in jitted.items():
      setattr(module, name, f)


def device_and_host(module, run, rounds):
  """run() apart: (device seconds per jitted function of `module`, host seconds per round, a
  profile of the last round's host work). See this file's docstring for how."""
  recorded, device = [], collections.Counter()

  def record(name, f):
    def call(*args, **kwargs):
      start = time.perf_counter()
      recorded.append(jax.block_until_ready(f(*args, **kwargs)))
      device[name] += time.perf_counter() - start
      return recorded[-1]
    return call

  noop = jax.jit(lambda *arrays: None, keep_unused=True)

  def replay(name, f):  # pylint: disable=unused-argument
    def call(*args, **kwargs):
      noop(*(x for x in jax.tree.leaves((args, kwargs))
             if isinstance(x, (np.ndarray, np.generic, jax.Array))))
      return next(results)
    return call

  with _jitted_replaced(module, record):
    run()
  host, profile = [], cProfile.Profile(timer=time.thread_time)
  for round_ in range(rounds + 2):  # Round 0 compiles the no-ops; the last one is profiled.
    results = iter(recorded)
    with _jitted_replaced(module, replay):
      start = time.thread_time()
      with profile if round_ > rounds else contextlib.nullcontext():
        run()
      host.append(time.thread_time() - start)
  return device, host[1:-1], profile


def _phases(device, profile, module, photos):
  """One line each: device ms/photo per jitted function; host ms/photo (profiled, so Python's
  share is inflated) by the module's own functions, numpy and dispatch (the no-ops)."""
  own = collections.Counter()
  for (file, _, name), (_, _, self_time, _, _) in pstats.Stats(profile).stats.items():
    own[name if file == module.__file__ else 'dispatch' if 'jax' in file or file == __file__
        else 'numpy and builtins'] += self_time
  return ('  device ' + ', '.join(f'{n} {s / photos * 1e3:.2f}' for n, s in device.items()) +
          '\n  host ' + ', '.join(f'{n} {s / photos * 1e3:.3f}' for n, s in own.most_common(8)))


def host_rates(images=256, rounds=3, weights='', celeba_dir=CELEBA_DIR, utkface_dir=UTKFACE_DIR,
               verbose=True):
  """{(implementation, source, photos per call): photos/s of the face finder's host work}, for
  now and BEFORE, on `images` CelebA crops and UTKFace chips; prints each with its device and
  host ms per photo by phase where verbose. weights: as --weights."""
  weights = converted_weights(weights)
  modules = {'now': detect_module(), 'before': detect_module(BEFORE)}
  sources = {'celeba 89x109': load_photos(celeba_dir, images),
             'utkface 200x200': load_photos(utkface_dir, images)}
  rates = {}
  for per_call in HOST_SETTINGS:
    for source, photos in sources.items():
      for name, module in modules.items():
        detector = module.load_detector(weights)

        def run(detector=detector, photos=photos, per_call=per_call):
          for start in range(0, len(photos), per_call):
            detector.detect(photos[start:start + per_call])
        run()  # Compiles.
        device, host, profile = device_and_host(module, run, rounds)
        rates[name, source, per_call] = len(photos) / np.median(host)
        if verbose:
          spread = ', '.join(f'{len(photos) / s:,.0f}' for s in host)
          print(f'{source}, {per_call} per call, {name}: host {rates[name, source, per_call]:,.0f}'
                f' photos/s (rounds: {spread}); ms per photo:\n'
                f'{_phases(device, profile, module, len(photos))}', flush=True)
  return rates


def slowest(rates, implementation):
  """The slowest of host_rates' settings for `implementation` ('now' or 'before'), photos/s."""
  return min(rate for (name, _, _), rate in rates.items() if name == implementation)


def same_faces(ours, theirs):
  """(photos whose face counts agree, largest box difference in px among those)."""
  agree, worst = 0, 0.0
  for faces, (boxes, _, _) in zip(ours, theirs):
    boxes = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32)
    if len(boxes) != len(faces.boxes):
      continue
    agree += 1
    for box in boxes:
      worst = max(worst, float(np.abs(faces.boxes - box).max(axis=1).min()))
  return agree, worst


def main(argv=None):
  args = parse_args(argv)
  if args.host:
    rates = host_rates(args.images, args.rounds, args.weights, args.celeba_dir, args.utkface_dir)
    if args.json:
      pathlib.Path(args.json).write_text(json.dumps(
          [{'implementation': n, 'photos': s, 'per_call': c, 'host_photos_per_s': r}
           for (n, s, c), r in rates.items()], indent=2) + '\n')
    return
  facenet_reference = import_facenet_reference()
  mtcnn_class = facenet_reference.import_mtcnn()
  import torch  # pylint: disable=g-import-not-at-top
  from gender_jax.faces import detect  # pylint: disable=g-import-not-at-top
  from gender_jax.faces import align  # pylint: disable=g-import-not-at-top
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  detector = detect.load_detector(converted_weights(args.weights))
  reference = mtcnn_class(select_largest=False)

  celeba = load_photos(args.celeba_dir, args.images)
  utkface = load_photos(args.utkface_dir, args.images)
  settings = {  # name: (photos, photos per call)
      f'celeba 89x109, batch {args.batch}': (celeba, args.batch),
      f'utkface 200x200, batch {args.batch}': (utkface, args.batch),
      'utkface 200x200, one at a time': (utkface, 1),
  }
  print(f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; jax '
        f'{jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads); '
        f'NMS for facenet-pytorch: '
        f'{"numpy transcription" if facenet_reference.transcribed_nms() else "torchvision"}')
  results = []
  for name, (photos, per_call) in settings.items():
    def ours(photos=photos, per_call=per_call):
      found = [f for s in range(0, len(photos), per_call)
               for f in detector.detect(photos[s:s + per_call])]
      for photo, f in zip(photos, found):
        if (face := align.largest_face(f)) is not None:
          align.align_face(photo, f.landmarks[face], TEMPLATE, 80)
      return found

    def theirs(photos=photos, per_call=per_call):
      out = []
      for s in range(0, len(photos), per_call):
        boxes, scores, points = reference.detect(photos[s:s + per_call], landmarks=True)
        out.extend(zip(boxes, scores, points))
      return out

    times = {'gender_jax': [], 'facenet_pytorch': [], 'facenet_nms': []}
    for round_ in range(args.rounds + 1):
      start = time.perf_counter()
      found = ours()
      jax_s = time.perf_counter() - start
      nms_before = facenet_reference.nms_seconds[0]
      start = time.perf_counter()
      expected = theirs()
      torch_s = time.perf_counter() - start
      if round_:  # Round 0 compiles.
        times['gender_jax'].append(jax_s)
        times['facenet_pytorch'].append(torch_s)
        times['facenet_nms'].append(facenet_reference.nms_seconds[0] - nms_before)
    agree, worst = same_faces(found, expected)
    jax_rate = len(photos) / np.median(times['gender_jax'])
    torch_rate = len(photos) / np.median(times['facenet_pytorch'])
    torch_rate_no_nms = len(photos) / np.median(
        np.subtract(times['facenet_pytorch'], times['facenet_nms']))
    results.append({'setting': name, 'photos': len(photos), 'gender_jax_per_s': jax_rate,
                    'facenet_pytorch_per_s': torch_rate,
                    'facenet_pytorch_without_nms_per_s': torch_rate_no_nms,
                    'ratio': jax_rate / torch_rate, 'ratio_without_nms': jax_rate /
                    torch_rate_no_nms, 'same_face_count': agree, 'max_box_diff_px': worst})
    print(f'{name:34s} gender_jax {jax_rate:7.1f}/s  facenet-pytorch {torch_rate:7.1f}/s '
          f'({torch_rate_no_nms:7.1f}/s without its NMS)  ratio {jax_rate / torch_rate:5.2f} '
          f'({jax_rate / torch_rate_no_nms:5.2f})  same faces in {agree}/{len(photos)}, '
          f'boxes within {worst:.1e} px', flush=True)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2) + '\n')


if __name__ == '__main__':
  process.apply()  # As the commands do, before JAX starts its backend.
  main()
