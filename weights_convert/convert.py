"""Keras VGG16 h5 weights -> the Flax VGG16Base params, written with orbax beside metadata.json.

The file is read with h5py alone, layer by layer, so every layout Keras has written loads:
- Keras 2 flat names: attrs `layer_names`, per layer `weight_names` like `block1_conv1_W_1:0`;
- tf-keras: the same attrs, weight names `block1_conv1/kernel:0` (nested groups);
- Keras 3 legacy h5: the same attrs, weight names `block1_conv1/kernel`;
- Keras 3 `.weights.h5`: no attrs, groups `layers/<key>/vars/<i>` named by a `name` attr;
and any of them inside a whole-model file's `model_weights` group. Kernels and biases are told
apart by rank, since their names differ between layouts.
"""
import dataclasses
import datetime
import hashlib
import json
import pathlib
import re
import shutil
import uuid

import h5py
import numpy as np
import orbax.checkpoint as ocp

from gender_jax.models import networks
from gender_jax.models import pretrained
from gender_jax.models import weights_folder
from gender_jax import UserError

# keras-vggface names its VGG16 convolutions conv{b}_{i} where Keras has block{b}_conv{i}.
_VGGFACE_NAME = re.compile(r'conv(\d)_(\d)')


class ConversionError(UserError):
  """An h5 file that cannot become VGG16 base params; the message names file, layer and why."""


@dataclasses.dataclass
class _Layer:
  name: str  # The layer's name in the file (`block1_conv1`, `conv1_1`, ...).
  weights: list  # (weight name, h5py.Dataset) pairs, in the file's order.
  target: str | None = None  # The Flax layer it feeds, where the file has no names to tell.


@dataclasses.dataclass
class Converted:
  """What a file holds: the base params and how they were found."""
  params: dict  # {'block1_conv1': {'kernel': float32 (3, 3, 3, 64), 'bias': (64,)}, ...}
  layout: str  # Which of the layouts above, with ' (whole model)' for a model_weights group.
  layer_map: dict  # Flax layer -> the h5 layer it came from.
  skipped_layers: list  # Layers with weights that the base does not use (the top, typically).


def _strings(obj, name):
  """An attribute list of strings, also where Keras split it into chunks `name0`, `name1`, ..."""
  if name in obj.attrs:
    chunks = [obj.attrs[name]]
  else:
    chunks = [obj.attrs[f'{name}{i}'] for i in range(len(obj.attrs))
              if f'{name}{i}' in obj.attrs]
  return [s.decode('utf8') if isinstance(s, bytes) else str(s)
          for chunk in chunks for s in np.atleast_1d(chunk)]


def _legacy_layout(layers):
  names = [w for layer in layers for w, _ in layer.weights]
  if any(re.search(r'_[Wb](_\d+)?:\d+$', w) for w in names):
    return 'keras2_flat_names'
  if any(re.search(r':\d+$', w) for w in names):
    return 'tf_keras'
  return 'keras3_legacy_h5'


def _natural(key):
  """Sorts Keras' automatic names in creation order: conv2d, conv2d_1, ..., conv2d_10."""
  stem, number = re.fullmatch(r'(.*?)(?:_(\d+))?', key).groups()
  return stem, int(number or 0)


def _walk_weights_h5(file_name, container):
  """Layers of a Keras 3 `.weights.h5`; unnamed ones (older Keras 3) are matched by order."""
  layers, named = [], True
  for key in sorted(container, key=_natural):
    variables = container[key]
    variables = variables.get('vars') if isinstance(variables, h5py.Group) else None
    if not isinstance(variables, h5py.Group):
      continue
    named = named and 'name' in variables.attrs
    layers.append(_Layer(variables.attrs.get('name', key),
                         [(k, variables[k]) for k in sorted(variables, key=int)]))
  if not named:
    convs = [layer for layer in layers if any(w.ndim == 4 for _, w in layer.weights)]
    targets = networks.vgg16_layer_names()
    if len(convs) != len(targets):
      raise ConversionError(
          f'{file_name}: a .weights.h5 without layer names, so its convolutions are matched by '
          f'order; expected {len(targets)} (VGG16), found {len(convs)}: '
          f'{[layer.name for layer in convs]}.')
    for layer, target in zip(convs, targets):
      layer.target = target
  return layers


def _read_layers(file_name, f):
  """(layout, layers) of an open h5 file, in any of the layouts in this module's docstring."""
  root = f['model_weights'] if isinstance(f.get('model_weights'), h5py.Group) else f
  whole = ' (whole model)' if root is not f else ''
  layer_names = _strings(root, 'layer_names')
  if layer_names:
    layers = []
    for name in layer_names:
      group = root.get(name)
      if not isinstance(group, h5py.Group):
        raise ConversionError(f'{file_name}: layer {name} is listed in layer_names but has no '
                              f'group; expected one per layer (a damaged file?).')
      weights = []
      for weight_name in _strings(group, 'weight_names'):
        dataset = group.get(weight_name)
        if not isinstance(dataset, h5py.Dataset):
          raise ConversionError(f'{file_name}: layer {name}: weight {weight_name} is listed but '
                                f'missing; expected a dataset at {group.name}/{weight_name}.')
        weights.append((weight_name, dataset))
      layers.append(_Layer(name, weights))
    return _legacy_layout(layers) + whole, layers
  for key in ('layers', '_layer_checkpoint_dependencies'):  # The latter: Keras 2.13's name.
    if isinstance(root.get(key), h5py.Group):
      return 'keras3_weights_h5' + whole, _walk_weights_h5(file_name, root[key])
  raise ConversionError(f'{file_name}: no Keras weights found; expected a layer_names attribute '
                        f'(Keras 2 / tf-keras / legacy h5) or a layers/ group (.weights.h5).')


def _target(layer):
  """The Flax layer an h5 layer feeds, or None for layers outside the base."""
  match = _VGGFACE_NAME.fullmatch(layer.name)
  name = layer.target or (f'block{match[1]}_conv{match[2]}' if match else layer.name)
  return name if name in networks.vgg16_layer_names() else None


def _kernel_and_bias(file_name, layer, expected):
  """The layer's kernel and bias as float32, told apart by rank and checked against `expected`."""
  by_rank = {}
  for weight_name, dataset in layer.weights:
    by_rank.setdefault(dataset.ndim, []).append((weight_name, dataset))
  found = ', '.join(f'{w} {d.shape}' for w, d in layer.weights) or 'no weights'
  if sorted(by_rank) != [1, 4] or len(by_rank[1]) != 1 or len(by_rank[4]) != 1:
    raise ConversionError(f'{file_name}: layer {layer.name}: expected a rank-4 kernel and a '
                          f'rank-1 bias, found {found}.')
  arrays = {}
  for key, rank in (('kernel', 4), ('bias', 1)):
    weight_name, dataset = by_rank[rank][0]
    if dataset.shape != expected[key].shape:
      raise ConversionError(f'{file_name}: layer {layer.name}: {key} {weight_name} has shape '
                            f'{dataset.shape}, expected {expected[key].shape}.')
    try:
      arrays[key] = np.asarray(dataset, dtype=np.float32)
    except (OSError, ValueError, TypeError) as e:
      raise ConversionError(f'{file_name}: layer {layer.name}: {key} {weight_name} is '
                            f'unreadable ({e}); expected {expected[key].shape} numbers.') from e
    if not np.isfinite(arrays[key]).all():
      raise ConversionError(f'{file_name}: layer {layer.name}: {key} {weight_name} holds NaN or '
                            f'infinite values; expected finite weights.')
  return arrays


def read_vgg16(h5_path):
  """Reads the VGG16 convolutional base of a Keras h5 file; raises ConversionError if it can't."""
  h5_path = pathlib.Path(h5_path)
  try:
    f = h5py.File(h5_path, 'r')
  except (OSError, ValueError) as e:
    raise ConversionError(f'{h5_path}: not a readable HDF5 file ({e}); expected a Keras VGG16 '
                          f'weights .h5.') from e
  with f:
    try:
      layout, layers = _read_layers(h5_path, f)
    except (OSError, KeyError, ValueError) as e:  # h5py's errors on a damaged file.
      raise ConversionError(f'{h5_path}: damaged HDF5 file ({e}); expected Keras weights.') from e
    expected = pretrained.base_param_shapes()
    found, skipped = {}, []
    for layer in layers:
      target = _target(layer)
      if target is None:
        if layer.weights:
          skipped.append(layer.name)
      elif target in found:
        raise ConversionError(f'{h5_path}: layers {found[target].name} and {layer.name} both '
                              f'map to {target}; expected one.')
      else:
        found[target] = layer
    missing = [name for name in networks.vgg16_layer_names() if name not in found]
    if missing:
      weighted = [layer.name for layer in layers if layer.weights]
      listed = ', '.join(weighted[:8]) + (f', ... ({len(weighted)} in all)'
                                          if len(weighted) > 8 else '')
      what = ('none of the 13 VGG16 convolutions block1_conv1..block5_conv3 found' if
              len(missing) == 13 else f'layer {", ".join(missing)} not found')
      raise ConversionError(f'{h5_path}: {what} (nor keras-vggface\'s conv{{b}}_{{i}} '
                            f'names); expected all 13 VGG16 convolutions, the file has layers '
                            f'with weights {listed or "none"}.')
    params = {name: _kernel_and_bias(h5_path, layer, expected[name])
              for name, layer in found.items()}
  return Converted(params=dict(sorted(params.items())), layout=layout,
                   layer_map={name: layer.name for name, layer in sorted(found.items())},
                   skipped_layers=skipped)


def check_out(out_dir, source, overwrite=False):
  """Raises ConversionError unless `source`'s weights may be written to `out_dir`: a new or empty
  folder, or one of `source`'s own weights (converting again); anything else there (another
  source's weights, other files) only with `overwrite`, and never a file."""
  out_dir = pathlib.Path(out_dir).expanduser()
  if out_dir.exists() and not out_dir.is_dir():
    raise ConversionError(f'{out_dir}: exists and is not a folder; choose another --out.')
  held = weights_folder.in_the_way(out_dir, source)
  if held and not overwrite:
    raise ConversionError(f'{out_dir} {held}; converting {source} there would replace them. '
                          f'Choose another --out, or pass --overwrite to replace them.')


def write(out_dir, params, metadata, overwrite=False):
  """Writes DIR/params (orbax) and DIR/metadata.json so that DIR is never half-written.

  Both go to a temporary folder beside DIR that is renamed into place; an existing DIR is
  replaced only after that succeeded, and only as `check_out` allows.
  """
  check_out(out_dir, metadata['source'], overwrite)
  out_dir = pathlib.Path(out_dir).expanduser().absolute()
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  # Not tempfile.mkdtemp: its folders are private (0700), a weights folder is not.
  temp = out_dir.with_name(f'.{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp')
  temp.mkdir()
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(temp / 'params', params)
      checkpointer.wait_until_finished()
    (temp / 'metadata.json').write_text(json.dumps(metadata, indent=2) + '\n')
    if out_dir.exists():
      old = temp.with_name(temp.name + '.old')
      out_dir.rename(old)
      try:
        temp.rename(out_dir)
      except OSError:
        old.rename(out_dir)
        raise
      shutil.rmtree(old, ignore_errors=True)
    else:
      temp.rename(out_dir)
  finally:
    shutil.rmtree(temp, ignore_errors=True)


def convert(source, h5_path, out_dir, sha256=None, overwrite=False):
  """Converts `h5_path` of `source` into `out_dir`; returns the metadata written beside params.

  `sha256`, if given, pins the file: another hash is a ConversionError. `out_dir` must be new,
  empty or hold `source`'s weights, unless `overwrite` (see `check_out`).
  """
  if source not in pretrained.H5_URL_OF_SOURCE:  # The VGG16 sources.
    raise ConversionError(f'unknown source {source!r}; expected one of '
                          f'{list(pretrained.H5_URL_OF_SOURCE)}.')
  check_out(out_dir, source, overwrite)
  h5_path = pathlib.Path(h5_path).expanduser()
  try:
    with open(h5_path, 'rb') as f:
      digest = hashlib.file_digest(f, 'sha256').hexdigest()
  except OSError as e:
    raise ConversionError(f'{h5_path}: cannot read ({e.strerror}); expected a Keras VGG16 '
                          f'weights .h5.') from e
  if sha256 is not None and digest != sha256.lower():
    raise ConversionError(f'{h5_path}: sha256 is {digest}, expected {sha256.lower()} (--sha256).')
  converted = read_vgg16(h5_path)
  metadata = {
      'source': source,
      'preprocessing': pretrained.PREPROCESSING_OF_SOURCE[source],
      'h5_file': h5_path.name,
      'h5_sha256': digest,
      'h5_layout': converted.layout,
      'layer_map': converted.layer_map,
      'skipped_layers': converted.skipped_layers,
      'architecture': 'vgg16',
      'param_count': int(sum(a.size for layer in converted.params.values()
                             for a in layer.values())),
      'created_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }
  write(out_dir, converted.params, metadata, overwrite)
  return metadata
