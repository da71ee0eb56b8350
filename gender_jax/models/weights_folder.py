"""A folder of converted weights, DIR/{params (orbax), metadata.json}: what it holds, whether
converting into it would replace something, and the errors that say a folder is not as asked."""
import itertools
import json
import pathlib

from flax import traverse_util
import orbax.checkpoint as ocp

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
  sha256 = source_sha256(metadata)
  details = [f'converted from {origin}'] * bool(origin) + [f'sha256 {sha256}'] * bool(sha256)
  return f'holds {found} weights' + (f' ({", ".join(details)})' if details else '')


def source_sha256(metadata):
  """The sha256 of the file a converted folder's weights came from (the Keras h5, face-api's
  weights shard, MTCNN's wheel; the npm tarball for face_resnet folders converted before the
  shard's was recorded), from its metadata; None where there is none (random or no weights)."""
  metadata = metadata or {}
  return (metadata.get('h5_sha256') or metadata.get('weights_sha256')
          or metadata.get('wheel_sha256') or metadata.get('tarball_sha256'))


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


def load(weights_dir, source, name, expected, command, offline, flag):
  """Restores a folder that `python -m weights_convert --source SOURCE` wrote, as (params,
  metadata), checked against `expected` (params as ShapeDtypeStructs).

  name: the weights as a message says them ('MTCNN'); command: the convert command, with {} for
  the folder; offline: the converter's offline routes; flag: the config flag naming the folder.
  Raises MissingWeightsError when the folder is missing or incomplete, WeightsMismatchError when
  it holds other weights; both one line, naming the folder and the command that makes it.
  """
  if not str(weights_dir or ''):  # Path('') would be the working directory.
    out = convert_target(f'weights/{source}', source)[0]
    raise MissingWeightsError(
        f'No {name} weights folder is set ({flag} is empty); pass {flag}={out}, made with: '
        f'{command.format(out)} (offline: {offline}).')
  weights_dir = pathlib.Path(weights_dir).expanduser().absolute()
  out, held = convert_target(weights_dir, source)
  make = f'make them with: {command.format(out)} (offline: {offline})'
  if held:  # Converting there would replace another source's weights (or other files).
    make = (f'{weights_dir} {held}; converting {source} there would replace them, so pass '
            f'{flag}={out} and {make}')
  for part in ('metadata.json', 'params'):
    if not (weights_dir / part).exists():
      why = 'no such folder' if not weights_dir.is_dir() else f'{part} is missing'
      raise MissingWeightsError(f'No {name} weights in {weights_dir} ({why}); {make}.')
  try:
    metadata = json.loads((weights_dir / 'metadata.json').read_text())
  except ValueError as e:
    raise MissingWeightsError(
        f'No {name} weights in {weights_dir} (metadata.json is unreadable: {e}); {make}.') from e
  if not isinstance(metadata, dict):
    raise MissingWeightsError(
        f'No {name} weights in {weights_dir} (metadata.json holds no JSON object); {make}.')
  if metadata.get('source') != source or metadata.get('architecture') != source:
    raise WeightsMismatchError(
        f'{weights_dir} holds {metadata.get("source")!r} weights, not {name} ones; {make}.')
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      params = checkpointer.restore(weights_dir / 'params')
  except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds on a bad folder.
    why = (str(e).splitlines() or [type(e).__name__])[0][:200]
    raise MissingWeightsError(
        f'No {name} weights in {weights_dir} (params do not restore: {why}); {make}.') from e
  if wrong := shape_mismatches(params, expected):
    raise WeightsMismatchError(
        f'{weights_dir}/params is not the {name} params tree: {wrong}; {make}.')
  return params, metadata
