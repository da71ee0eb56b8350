"""A folder of converted weights, DIR/{params (orbax), metadata.json}: what it holds, whether
converting into it would replace something, and the errors that say a folder is not as asked."""
import itertools
import json
import pathlib

from flax import traverse_util

from gender_jax import UserError


class MissingWeightsError(UserError, FileNotFoundError):
  """The converted weights folder is missing or incomplete; the message says how to make it."""


class WeightsMismatchError(UserError, ValueError):
  """The converted weights are not the ones asked for (another source or architecture)."""


def in_the_way(folder, source):
  """What in `folder` converting `source` there would replace, as a phrase after the folder's
  name ('holds imagenet weights (converted from F, sha256 H)'); '' where nothing would be lost:
  no folder, an empty one, or `source`'s own weights (converting again renews them)."""
  folder = pathlib.Path(folder).expanduser()
  if not folder.exists():
    return ''
  if not folder.is_dir():
    return 'is a file, not a folder'
  names = sorted(p.name + '/' * p.is_dir() for p in folder.iterdir())
  if not names:
    return ''
  if 'metadata.json' not in names:
    listed = ', '.join(names[:5]) + (f', ... ({len(names)} in all)' if len(names) > 5 else '')
    return f'holds {listed}, not converted weights (no metadata.json)'
  try:
    metadata = json.loads((folder / 'metadata.json').read_text())
  except (OSError, ValueError) as e:
    return f'holds an unreadable metadata.json ({e})'
  found = metadata.get('source') if isinstance(metadata, dict) else None
  if found == source:
    return ''
  if not found:
    return 'holds a metadata.json that names no source'
  origin = metadata.get('h5_file') or metadata.get('wheel_file') or metadata.get('pt_dir')
  sha256 = metadata.get('h5_sha256') or metadata.get('wheel_sha256')
  details = [f'converted from {origin}'] * bool(origin) + [f'sha256 {sha256}'] * bool(sha256)
  return f'holds {found} weights' + (f' ({", ".join(details)})' if details else '')


def convert_target(weights_dir, source):
  """(folder, held): where to convert `source`'s weights for a run that reads `weights_dir`.

  That is `weights_dir` itself (held '') unless converting there would replace something else,
  such as another source's weights: then the first of weights/SOURCE, weights/SOURCE_2, ...
  where it would not, and held says what `weights_dir` holds (as `in_the_way`).
  """
  held = in_the_way(weights_dir, source)
  if not held:
    return str(weights_dir), ''
  for i in itertools.count(1):
    folder = f'weights/{source}' + (f'_{i}' if i > 1 else '')
    if not in_the_way(folder, source):
      return folder, held


def shapes(tree):
  """{leaf path: (shape, dtype)} of a params tree."""
  return {k: (tuple(v.shape), str(v.dtype))
          for k, v in traverse_util.flatten_dict(tree, sep='/').items()}


def shape_mismatches(params, expected):
  """'' when params has exactly the leaves, shapes and dtypes of `expected`, else what differs."""
  want, got = shapes(expected), shapes(params)
  return ', '.join(f'{k}: {got.get(k)}, expected {want.get(k)}'
                   for k in sorted(want.keys() | got.keys()) if got.get(k) != want.get(k))
