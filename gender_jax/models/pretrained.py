"""Converted pretrained bases: where they come from, and loading them for the models.

`python -m weights_convert` writes a folder DIR/{params (orbax), metadata.json}; `load` restores
a VGG16 one (face_resnet.load_params a face_resnet one) and refuses weights that belong to another
source, so each model gets the base and the preprocessing it was trained with.
"""
import json
import pathlib

from absl import logging
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from gender_jax.models import face_resnet
from gender_jax.models import networks
from gender_jax.models import weights_folder

# Each source's input normalisation, a name in gender_jax.models.preprocessing.
PREPROCESSING_OF_SOURCE = {'imagenet': 'caffe_imagenet', 'vggface': 'vggface_v1',
                           'face_resnet': 'face_api'}
# The public notop (no fully connected top) h5 files of the VGG16 sources.
H5_URL_OF_SOURCE = {
    'imagenet': 'https://storage.googleapis.com/tensorflow/keras-applications/vgg16/'
                'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5',
    'vggface': 'https://github.com/rcmalli/keras-vggface/releases/download/v2.0/'
               'rcmalli_vggface_tf_notop_vgg16.h5',
}


def base_param_shapes():
  """VGG16Base's params as ShapeDtypeStructs: what every converted folder must hold."""
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  return jax.eval_shape(networks.VGG16Base().init, jax.random.key(0), images)['params']


def how_to_get(weights_dir, source, flag='--config.weights'):
  """How to make `source`'s weights for a run that reads `weights_dir` (set by `flag`): the
  commands (download+convert, or by hand) that write them there, or, where that would replace
  something else (another source's weights), into another folder to pass as `flag`."""
  out, held = weights_folder.convert_target(weights_dir, source)
  url = H5_URL_OF_SOURCE[source]
  h5 = url.rsplit('/', 1)[-1]
  commands = (f'  python -m weights_convert --source {source} --download --out {out}\n'
              f'or, where this machine is offline, fetch the file elsewhere and convert it:\n'
              f'  curl -L -o {h5} {url}\n'
              f'  python -m weights_convert --source {source} --h5 {h5} --out {out}')
  if not held:
    return f'Make them with\n{commands}'
  return (f'{weights_dir} {held}; converting {source} there would replace them, so pass '
          f'{flag}={out} and make them with\n{commands}')


def _missing(weights_dir, expected_source, why):
  sources = [expected_source] if expected_source else list(H5_URL_OF_SOURCE)
  commands = '\n'.join((f'For {source} weights:\n' if len(sources) > 1 else '') +
                       how_to_get(weights_dir, source) for source in sources)
  return weights_folder.MissingWeightsError(
      f'No converted weights in {weights_dir} ({why}). {commands}')


def load(weights_dir, expected_source=None):
  """Restores a converted folder as (base_params of numpy arrays, metadata dict).

  Raises weights_folder.MissingWeightsError (with the commands to make the folder) when it is
  missing or incomplete, WeightsMismatchError when it holds another source's or model's weights.
  """
  if not str(weights_dir or ''):
    source = expected_source or 'vggface'
    folder = weights_folder.convert_target(f'weights/{source}', source)[0]
    raise weights_folder.MissingWeightsError(
        f'No weights folder is set (config.weights is empty); pass --config.weights={folder}. '
        f'{how_to_get(folder, source)}')
  weights_dir = pathlib.Path(weights_dir).expanduser().absolute()
  if expected_source is not None and expected_source not in H5_URL_OF_SOURCE:
    raise ValueError(f'Unknown source {expected_source!r}; expected one of '
                     f'{list(H5_URL_OF_SOURCE)}.')
  if not weights_dir.is_dir():
    raise _missing(weights_dir, expected_source, 'no such folder')
  for part in ('metadata.json', 'params'):
    if not (weights_dir / part).exists():
      raise _missing(weights_dir, expected_source, f'{part} is missing')
  try:
    metadata = json.loads((weights_dir / 'metadata.json').read_text())
  except ValueError as e:
    raise _missing(weights_dir, expected_source, f'metadata.json is unreadable: {e}') from e
  if not isinstance(metadata, dict):
    raise _missing(weights_dir, expected_source, 'metadata.json holds no JSON object')

  source = metadata.get('source')
  if expected_source is not None and source != expected_source:
    raise weights_folder.WeightsMismatchError(
        f'{weights_dir} holds {source!r} weights, but this model needs {expected_source!r} '
        f'weights.\n{how_to_get(weights_dir, expected_source)}')
  if (metadata.get('architecture') != 'vgg16' or
      metadata.get('preprocessing') != PREPROCESSING_OF_SOURCE.get(source)):
    raise weights_folder.WeightsMismatchError(
        f'{weights_dir}/metadata.json: expected a vgg16 base from one of '
        f'{list(H5_URL_OF_SOURCE)} with its preprocessing, got architecture='
        f'{metadata.get("architecture")!r}, source={source!r}, '
        f'preprocessing={metadata.get("preprocessing")!r}.')

  try:
    with ocp.StandardCheckpointer() as checkpointer:
      params = checkpointer.restore(weights_dir / 'params')
  except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds on a bad folder.
    why = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise _missing(weights_dir, expected_source,
                   f'params do not restore: {why[:200]}{"..." * (len(why) > 200)}') from e

  if wrong := weights_folder.shape_mismatches(params, base_param_shapes()):
    raise weights_folder.WeightsMismatchError(
        f'{weights_dir}/params is not a VGG16Base params tree: {wrong}.')
  return params, metadata


def load_base(config):
  """Returns (base_params or None, weights metadata or None) for the config's model.

  A pretrained model without converted weights fails with the commands that make them, unless
  `allow_random_base` is set: then the base stays random and the metadata says so loudly.
  """
  source = networks.REGISTRY[config.model].weights_source
  if source is None:
    return None, None
  try:
    if source == 'face_resnet':
      return face_resnet.load_params(config.weights)
    return load(config.weights, expected_source=source)
  except weights_folder.MissingWeightsError:
    if not config.allow_random_base:
      raise
  logging.warning('RANDOM %s BASE: no converted weights at %r; results are NOT pretrained.',
                  config.model, config.weights)
  return None, {'source': source, 'preprocessing': PREPROCESSING_OF_SOURCE[source],
                'random_base': True}
