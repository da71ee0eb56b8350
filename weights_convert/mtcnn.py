"""facenet-pytorch's MTCNN weights (pnet.pt, rnet.pt, onet.pt) -> gender_jax.faces.mtcnn params.

The files ship inside the facenet-pytorch wheel (facenet_pytorch/data/) in PyTorch's legacy
format, read by `torch_legacy` without torch. Torch layouts become Flax ones: conv weights
(out, in, kh, kw) -> (kh, kw, in, out), linear weights (out, in) -> (in, out); the dense layers
need no reordering because gender_jax.faces.mtcnn flattens as facenet-pytorch does.
"""
import datetime
import hashlib
import pathlib
import zipfile

import numpy as np

from gender_jax.faces import mtcnn
from weights_convert import convert, torch_legacy

PT_FILES = {'pnet': 'pnet.pt', 'rnet': 'rnet.pt', 'onet': 'onet.pt'}
WHEEL_MEMBER = 'facenet_pytorch/data/{}'
# The wheel is fetched with `pip download`, so the user's own pip configuration (index, mirrors,
# proxies) decides where from; its sha256 is pinned.
WHEEL_REQUIREMENT = 'facenet-pytorch==2.6.0'
WHEEL_FILE = 'facenet_pytorch-2.6.0-py3-none-any.whl'
WHEEL_SHA256 = 'ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca'


def read_wheel(wheel):
  """{'pnet.pt': bytes, ...} from a facenet-pytorch wheel; ConversionError if it is not one."""
  wheel = pathlib.Path(wheel).expanduser()
  try:
    with zipfile.ZipFile(wheel) as z:
      names = set(z.namelist())
      missing = [WHEEL_MEMBER.format(f) for f in PT_FILES.values()
                 if WHEEL_MEMBER.format(f) not in names]
      if missing:
        raise convert.ConversionError(
            f'{wheel}: no {", ".join(missing)}; expected a facenet-pytorch wheel (pip download '
            f'--no-deps facenet-pytorch).')
      return {f: z.read(WHEEL_MEMBER.format(f)) for f in PT_FILES.values()}
  except OSError as e:
    raise convert.ConversionError(f'{wheel}: cannot read ({e.strerror or e}); expected a '
                                  f'facenet-pytorch wheel.') from e
  except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
    raise convert.ConversionError(f'{wheel}: not a wheel (zip) file ({e}); expected a '
                                  f'facenet-pytorch wheel.') from e


def read_dir(folder):
  """{'pnet.pt': bytes, ...} from a folder such as an installed facenet_pytorch/data."""
  folder = pathlib.Path(folder).expanduser()
  files = {}
  for f in PT_FILES.values():
    try:
      files[f] = (folder / f).read_bytes()
    except OSError as e:
      raise convert.ConversionError(
          f'{folder / f}: cannot read ({e.strerror or e}); expected facenet-pytorch\'s '
          f'{", ".join(PT_FILES.values())} in {folder} (its facenet_pytorch/data).') from e
  return files


def _torch_layout(kind, shape):
  """A Flax param's shape as facenet-pytorch stores it."""
  if kind != 'kernel':
    return tuple(shape)
  return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape[::-1])


def _to_flax(name, state_dict, expected):
  """One network's torch state dict as Flax params, checked against `expected` shapes."""
  file_name, params = PT_FILES[name], {}
  targets = {f'{layer}.{"bias" if kind == "bias" else "weight"}': (layer, kind, want.shape)
             for layer, kinds in expected.items() for kind, want in kinds.items()}
  for key, value in state_dict.items():
    if key not in targets:
      raise convert.ConversionError(f'{file_name}: unexpected entry {key}; expected '
                                    f'facenet-pytorch\'s {name} weights.')
    layer, kind, shape = targets[key]
    want = _torch_layout(kind, shape)
    if not isinstance(value, np.ndarray) or value.shape != want:
      raise convert.ConversionError(f'{file_name}: {key} has shape '
                                    f'{getattr(value, "shape", type(value).__name__)}, expected '
                                    f'{want} (facenet-pytorch\'s {name}).')
    if kind == 'kernel':
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    params.setdefault(layer, {})[kind] = np.ascontiguousarray(value, np.float32)
  missing = [key for key in targets if key not in state_dict]
  if missing:
    raise convert.ConversionError(f'{file_name}: {", ".join(missing)} missing; expected '
                                  f'facenet-pytorch\'s {name} weights.')
  return params


def read_params(files, origin):
  """Flax params {'pnet', 'rnet', 'onet'} from the three .pt files' bytes; `origin` names where
  they came from in errors."""
  expected = mtcnn.param_shapes()
  params = {}
  for name, file_name in PT_FILES.items():
    try:
      state_dict = torch_legacy.loads(files[file_name])
    except torch_legacy.TorchFileError as e:
      raise convert.ConversionError(f'{origin}: {file_name}: {e}; expected facenet-pytorch\'s '
                                    f'legacy .pt weights.') from e
    if not isinstance(state_dict, dict):
      raise convert.ConversionError(f'{origin}: {file_name} holds a {type(state_dict).__name__}, '
                                    f'expected a state dict.')
    try:
      params[name] = _to_flax(name, state_dict, expected[name])
    except convert.ConversionError as e:
      raise convert.ConversionError(f'{origin}: {e}') from e
  return params


def convert_mtcnn(out_dir, wheel=None, pt_dir=None, sha256=None, overwrite=False):
  """Converts the weights in `wheel` or `pt_dir` into `out_dir`; returns the metadata written.

  `sha256`, if given, pins the wheel: another hash is a ConversionError. `out_dir` must be new,
  empty or hold MTCNN weights, unless `overwrite` (see convert.check_out).
  """
  if (wheel is None) == (pt_dir is None):
    raise convert.ConversionError('give exactly one of a facenet-pytorch wheel or a folder with '
                                  'pnet.pt, rnet.pt and onet.pt.')
  convert.check_out(out_dir, 'mtcnn', overwrite)
  metadata = {'source': 'mtcnn', 'architecture': 'mtcnn'}
  if wheel is not None:
    wheel = pathlib.Path(wheel).expanduser()
    try:
      with open(wheel, 'rb') as f:
        digest = hashlib.file_digest(f, 'sha256').hexdigest()
    except OSError as e:
      raise convert.ConversionError(f'{wheel}: cannot read ({e.strerror}); expected a '
                                    f'facenet-pytorch wheel.') from e
    if sha256 is not None and digest != sha256.lower():
      raise convert.ConversionError(f'{wheel}: sha256 is {digest}, expected {sha256.lower()} '
                                    f'(--sha256).')
    files, origin = read_wheel(wheel), wheel
    metadata.update(wheel_file=wheel.name, wheel_sha256=digest)
  else:
    if sha256 is not None:
      raise convert.ConversionError('--sha256 pins a wheel; --pt-dir has three files, whose '
                                    'sha256 are recorded in metadata.json.')
    files, origin = read_dir(pt_dir), pathlib.Path(pt_dir).expanduser()
    metadata.update(pt_dir=str(origin.absolute()))
  params = read_params(files, origin)
  metadata.update(
      pt_sha256={f: hashlib.sha256(data).hexdigest() for f, data in files.items()},
      param_count=int(sum(a.size for net in params.values() for layer in net.values()
                          for a in layer.values())),
      created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))
  convert.write(out_dir, params, metadata, overwrite)
  return metadata
