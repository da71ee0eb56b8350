"""face-api's face-recognition ResNet weights (TF.js: a weights manifest and its .bin shard) ->
gender_jax.models.face_resnet params.

They ship in the npm package @vladmandic/face-api as model/face_recognition_model*, fetched with
`npm pack`, so the user's own npm configuration decides where from. They are decoded with numpy
as TF.js's decodeWeights (tfjs-core io/io_utils) does: the tensors lie back to back in the
manifest's order; a uint8 (or uint16) quantised one is `q * scale + min` in float64 (JavaScript
numbers), rounded once to float32; the others are little-endian float32. The manifest's names and
TF.js layouts (HWIO filters, fc as (in, out)) are the Flax params', so no tensor is transposed.
"""
import datetime
import gzip
import hashlib
import json
import pathlib
import tarfile
import zlib

import numpy as np
from flax import traverse_util

from gender_jax.models import face_resnet
from gender_jax.models import pretrained
from weights_convert import convert

PACKAGE = '@vladmandic/face-api'
VERSION = '1.7.15'
TARBALL_FILE = 'vladmandic-face-api-1.7.15.tgz'  # The name `npm pack` gives it.
# The tarball's sha256; its sha512 is the registry's published integrity for 1.7.15.
TARBALL_SHA256 = '0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031'
TARBALL_DIR = 'package/model/'
MANIFEST = 'face_recognition_model-weights_manifest.json'
SHARD = 'face_recognition_model.bin'  # The weights themselves.
# face-api 1.7.15's files; the weights were checked against face-api with these.
FILE_SHA256 = {
    MANIFEST: 'cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b',
    SHARD: 'b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589',
}
# As the authors state them: face-api's LICENSE and package.json; dlib-models' README (the
# network is dlib's, trained by Davis King, as face-api's TUTORIAL.md says).
LICENSE = {
    'face_api': 'MIT (LICENSE: "MIT License, Copyright (c) Vladimir Mandic")',
    'model': ('dlib-models README (Davis King): "As far as I am concerned, anyone can do '
              'whatever they want with these model files as I\'ve released them into the '
              'public domain."'),
    'training_data': ('dlib-models README: about 3 million faces of 7485 identities from the '
                      'FaceScrub and VGG datasets and images scraped from the internet, with no '
                      'LFW identity'),
}
_VALUE_DTYPES = {'float32': '<f4', 'uint8': 'u1', 'uint16': '<u2', 'float16': '<f2'}
_EXPECTED = "expected face-api's face_recognition_model (npm pack @vladmandic/face-api@1.7.15)"


def _manifest(data, origin):
  """The manifest's groups [{'paths': [...], 'weights': [spec, ...]}]; ConversionError if it is
  not a TF.js weights manifest."""
  try:
    groups = json.loads(data)
    ok = isinstance(groups, list) and all(
        isinstance(g['paths'], list) and all(isinstance(p, str) for p in g['paths'])
        and all(isinstance(w['name'], str) and isinstance(w['dtype'], str)
                and all(isinstance(n, int) and n >= 0 for n in w['shape']) for w in g['weights'])
        for g in groups)
  except (ValueError, TypeError, KeyError) as e:
    raise convert.ConversionError(f'{origin}/{MANIFEST}: not a TF.js weights manifest ({e}); '
                                  f'{_EXPECTED}.') from e
  if not ok:
    raise convert.ConversionError(f'{origin}/{MANIFEST}: not a TF.js weights manifest (a list '
                                  f'of groups with paths and weights); {_EXPECTED}.')
  return groups


def _byte_length(spec):
  """How many bytes a tensor takes in its shard (TF.js's getWeightBytelength); ValueError for an
  entry this reader cannot decode."""
  quantization = spec.get('quantization') or {}
  kind = quantization.get('dtype', spec['dtype'])
  if spec['dtype'] != 'float32' or kind not in _VALUE_DTYPES:
    raise ValueError(f'{spec["name"]} is {spec["dtype"]} stored as {kind}; only float32 '
                     f'(plain, uint8, uint16 or float16) is read')
  if kind in ('uint8', 'uint16') and not all(
      isinstance(quantization.get(k), (int, float)) for k in ('min', 'scale')):
    raise ValueError(f'{spec["name"]} is {kind}-quantised without a min and scale')
  return int(np.prod(spec['shape'], dtype=np.int64)) * np.dtype(_VALUE_DTYPES[kind]).itemsize


def decode_tensor(spec, raw):
  """One manifest entry's bytes -> float32 array, as TF.js's decodeWeight computes it."""
  quantization = spec.get('quantization')
  kind = quantization['dtype'] if quantization else 'float32'
  values = np.frombuffer(raw, _VALUE_DTYPES[kind])
  if kind in ('uint8', 'uint16'):
    # JavaScript: values[i] = v * scale + min, in double, stored into a Float32Array.
    values = values.astype(np.float64) * quantization['scale'] + quantization['min']
  return values.astype(np.float32).reshape(spec['shape'])


def decode_weights(manifest, shards, origin):
  """{name: float32 array} from a manifest's bytes and {shard path: bytes}; ConversionError
  naming the file and what is wrong (a missing, short or long shard, an unreadable entry)."""
  tensors = {}
  for group in _manifest(manifest, origin):
    missing = [p for p in group['paths'] if p not in shards]
    if missing:
      raise convert.ConversionError(f'{origin}/{missing[0]}: missing; the manifest names it as a '
                                    f'weights shard; {_EXPECTED}.')
    buffer = b''.join(shards[p] for p in group['paths'])
    try:
      sizes = [_byte_length(spec) for spec in group['weights']]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise convert.ConversionError(f'{origin}/{MANIFEST}: {e}; {_EXPECTED}.') from e
    shard = ', '.join(group['paths']) or '(no shard)'
    if len(buffer) != sum(sizes):
      why = 'truncated' if len(buffer) < sum(sizes) else 'longer than that: another file'
      raise convert.ConversionError(
          f'{origin}/{shard}: {len(buffer):,} bytes, but the manifest\'s {len(sizes)} tensors '
          f'take {sum(sizes):,} ({why}?); {_EXPECTED}.')
    offset = 0
    for spec, size in zip(group['weights'], sizes):
      tensors[spec['name']] = decode_tensor(spec, buffer[offset:offset + size])
      offset += size
  return tensors


def read_params(files, origin):
  """The Flax params tree from {file name: bytes} (the manifest and its shards), checked against
  gender_jax.models.face_resnet's tensors, names and shapes."""
  tensors = decode_weights(files[MANIFEST], files, origin)
  expected = traverse_util.flatten_dict(face_resnet.param_shapes(), sep='/')
  where = f'{origin}/{MANIFEST}'
  if missing := [name for name in expected if name not in tensors]:
    raise convert.ConversionError(
        f'{where}: no tensor {", ".join(missing[:3])}'
        f'{f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""}; {_EXPECTED}.')
  if extra := [name for name in tensors if name not in expected]:
    raise convert.ConversionError(f'{where}: unexpected tensor {", ".join(extra[:3])}; '
                                  f'{_EXPECTED}.')
  for name, want in expected.items():
    if tensors[name].shape != want.shape:
      raise convert.ConversionError(f'{where}: {name} has shape {tensors[name].shape}, expected '
                                    f'{want.shape}; {_EXPECTED}.')
    if not np.isfinite(tensors[name]).all():
      raise convert.ConversionError(f'{where}: {name} holds NaN or infinite values; '
                                    f'{_EXPECTED}.')
  return traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in tensors.items()})


def _shard_names(manifest, origin):
  return [p for group in _manifest(manifest, origin) for p in group['paths']]


def read_tarball(tarball):
  """{file name: bytes} of the manifest and its shards in face-api's npm tarball."""
  try:
    with tarfile.open(tarball, 'r:gz') as tar:
      def member(name):
        try:
          f = tar.extractfile(TARBALL_DIR + name)
        except KeyError:
          f = None
        if f is None:
          raise convert.ConversionError(f'{tarball}: no {TARBALL_DIR}{name}; {_EXPECTED}.')
        return f.read()
      files = {MANIFEST: member(MANIFEST)}
      for name in _shard_names(files[MANIFEST], f'{tarball}:{TARBALL_DIR.rstrip("/")}'):
        files[name] = member(name)
      return files
  # Before OSError, which gzip.BadGzipFile is.
  except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as e:
    raise convert.ConversionError(f'{tarball}: not a complete npm tarball (.tgz: {e}); '
                                  f'{_EXPECTED}.') from e
  except OSError as e:
    raise convert.ConversionError(f'{tarball}: cannot read ({e.strerror or e}); {_EXPECTED}.') \
        from e


def read_dir(folder):
  """{file name: bytes} of the manifest and its shards in a folder such as face-api's model/."""
  folder = pathlib.Path(folder).expanduser()
  def read(name):
    try:
      return (folder / name).read_bytes()
    except OSError as e:
      raise convert.ConversionError(f'{folder / name}: cannot read ({e.strerror or e}); '
                                    f'expected face-api\'s model/ folder holding {MANIFEST} and '
                                    f'its shards.') from e
  files = {MANIFEST: read(MANIFEST)}
  for name in _shard_names(files[MANIFEST], folder):
    files[name] = read(name)
  return files


def convert_face_resnet(out_dir, tarball=None, model_dir=None, sha256=None, overwrite=False):
  """Converts the weights in `tarball` or `model_dir` into `out_dir`; returns the metadata.

  `sha256`, if given, pins the tarball. The manifest and shard must be face-api 1.7.15's (their
  sha256 are pinned). `out_dir` must be new, empty or hold face_resnet weights, unless
  `overwrite` (see convert.check_out).
  """
  if (tarball is None) == (model_dir is None):
    raise convert.ConversionError('give exactly one of a face-api npm tarball or its model/ '
                                  'folder.')
  convert.check_out(out_dir, 'face_resnet', overwrite)
  metadata = {'source': 'face_resnet', 'architecture': 'face_resnet',
              'network': "dlib's face-recognition ResNet (29 convolutions), face-api's "
                         'FaceRecognitionNet', 'package': PACKAGE, 'version': VERSION}
  if tarball is not None:
    tarball = pathlib.Path(tarball).expanduser()
    try:
      with open(tarball, 'rb') as f:
        digest = hashlib.file_digest(f, 'sha256').hexdigest()
    except OSError as e:
      raise convert.ConversionError(f'{tarball}: cannot read ({e.strerror}); {_EXPECTED}.') \
          from e
    if sha256 is not None and digest != sha256.lower():
      raise convert.ConversionError(f'{tarball}: sha256 is {digest}, expected {sha256.lower()} '
                                    f'(--sha256).')
    files, origin = read_tarball(tarball), f'{tarball}:{TARBALL_DIR.rstrip("/")}'
    metadata.update(tarball_file=tarball.name, tarball_sha256=digest)
  else:
    if sha256 is not None:
      raise convert.ConversionError('--sha256 pins a tarball; --model-dir has files whose '
                                    'sha256 are pinned and recorded in metadata.json.')
    origin = pathlib.Path(model_dir).expanduser()
    files = read_dir(origin)
    metadata.update(model_dir=str(origin.absolute()))
  params = read_params(files, origin)
  digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
  for name, digest in digests.items():
    if digest != FILE_SHA256.get(name, digest):
      raise convert.ConversionError(
          f'{origin}/{name}: sha256 is {digest}, expected {FILE_SHA256[name]} (face-api '
          f'{VERSION}\'s); a damaged or different model file. Fetch it again: '
          f'{face_resnet.CONVERT_COMMAND.format("DIR")}')
  metadata.update(
      file_sha256=digests,
      weights_sha256=digests[SHARD],  # What tells these weights apart, the same on every route.
      license=LICENSE,
      preprocessing=pretrained.PREPROCESSING_OF_SOURCE['face_resnet'],
      input={'size': [face_resnet.INPUT_SIZE] * 2, 'channels': 'RGB',
             'mean_rgb': list(face_resnet.MEAN_RGB), 'scaling': '(x - mean_rgb) / 255',
             'resize': 'face-api pads to a square (zeros, centred) and resizes bilinearly'},
      outputs={'encode': face_resnet.FEATURES, 'descriptor': face_resnet.DESCRIPTOR},
      param_count=int(sum(a.size for a in traverse_util.flatten_dict(params).values())),
      created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))
  convert.write(out_dir, params, metadata, overwrite)
  return metadata
