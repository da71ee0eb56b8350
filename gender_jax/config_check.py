"""Every field of an experiment config checked before any work, in one place.

Each problem is one line naming the field, the value given and what is accepted; training,
the study and the data tool call `check` first, so a mistake costs no data loading.
"""
import math

from gender_jax import UserError
from gender_jax.faces import align
from gender_jax.faces import inputs
from gender_jax.models import networks

CHOICES = {
    'model': tuple(networks.REGISTRY),
    'resize': align.RESIZES,
    'face_align': inputs.FACE_ALIGNS,
    'face_missing': inputs.MISSING,
    'custom_norm': networks.NORMS,
    'face_resnet_features': networks.FACE_RESNET_FEATURES,
    'head_pooling': networks.POOLINGS,
    'compute_dtype': ('float32', 'bfloat16', 'float16'),
    'optimizer': ('adam', 'sgd'),
    'lr_schedule': ('constant', 'cosine'),
}
# The smallest zoom a training image may get: the step's warp has no antialiasing filter for
# more (`augment_scale` and, with it, `augment_aspect` are bounded by it).
MIN_ZOOM = 0.7
# field: (lowest, highest, whether the lowest itself is accepted); None: no bound.
RANGES = {
    'num_epochs': (1, None, True), 'batch_size': (1, None, True),
    'eval_batch_size': (1, None, True), 'learning_rate': (0, None, False),
    'finetune_learning_rate': (0, None, False), 'weight_decay': (0, None, True),
    'warmup_epochs': (0, None, True), 'dropout_rate': (0, 1, True),
    'head_input_dropout': (0, 1, True), 'max_bad_fraction': (0, 1, True),
    'seed': (0, None, True), 'train_seed': (-1, None, True), 'face_zoom': (0, None, False),
    'augment_shift': (0, 1, True), 'augment_scale': (0, round(1 - MIN_ZOOM, 6), True),
    'augment_aspect': (0, 1, True),
    'augment_rotate': (0, 180, True), 'augment_brightness': (0, 1, True),
    'augment_contrast': (0, 1, True), 'augment_saturation': (0, 1, True),
    'custom_convs_per_block': (1, None, True),
}
SPLIT_SIZES = ('num_train', 'num_valid', 'num_test')


class ConfigError(UserError, ValueError):
  """Fields of a config that cannot run; the message has a line per problem."""


def problems(config, num_devices=1):
  """The lines saying what is wrong with `config` for a run on num_devices; [] if nothing."""
  found = []
  bad = lambda field, accepted: found.append(
      f'config.{field}={config[field]!r}: expected {accepted}.')
  for field, choices in CHOICES.items():
    if config[field] not in choices:
      bad(field, 'one of ' + ', '.join(map(repr, choices)))
  for field, (low, high, inclusive) in RANGES.items():
    value = config[field]
    too_low = value < low if inclusive else value <= low
    if (isinstance(value, bool) or not math.isfinite(value) or too_low
        or (high is not None and value > high)):
      bound = f'{">=" if inclusive else ">"} {low}' + (f' and <= {high}' if high else '')
      bad(field, bound if math.isfinite(value) else f'a finite number {bound}')
  for field in SPLIT_SIZES:
    if config[field] < -1 or config[field] == 0:
      bad(field, 'a number of images (>= 1), or -1 for all')
  for field in ('batch_size', 'eval_batch_size'):
    if config[field] >= 1 and config[field] % num_devices:
      bad(field, f'a multiple of the {num_devices} devices, so every device gets a share')
  if len(config.augment_frame) != 4 or not all(0 <= x < 1 for x in config.augment_frame):
    bad('augment_frame', '4 fractions (left, top, right, bottom), each >= 0 and < 1')
  if len(config.face_template) not in (0, 2 * align.NUM_LANDMARKS):
    bad('face_template', f'() (derived from the training faces) or {2 * align.NUM_LANDMARKS} '
        'numbers, (x, y) of each landmark')
  if not config.custom_channels or not all(c >= 1 for c in config.custom_channels):
    bad('custom_channels', 'one or more channel counts, each >= 1')
  if not all(h >= 1 for h in config.head_hidden):
    bad('head_hidden', 'widths of the hidden Dense layers, each >= 1 (or () for none)')
  if found:  # The checks below need valid values of the fields above.
    return found
  info = networks.REGISTRY[config.model]
  smallest = info.min_image_size(config)
  if config.image_size < smallest:
    bad('image_size', f'>= {smallest}: {config.model} halves the image {info.blocks(config)} '
        'times' + ' by unpadded layers' * (smallest > 2 ** info.blocks(config)))
  if not info.pretrained:
    if config.weights:
      bad('weights', "'' (empty): the custom model trains from scratch, it loads no weights")
    if config.finetune_blocks:
      bad('finetune_blocks', '() for the custom model: all of it trains')
  else:
    unknown = [b for b in config.finetune_blocks if b not in info.block_names]
    if unknown:
      bad('finetune_blocks', f'block names among {", ".join(info.block_names)}')
  width_zoom = (1 - config.augment_scale) * (1 - config.augment_aspect)
  if width_zoom < MIN_ZOOM:
    bad('augment_aspect', f'<= {1 - MIN_ZOOM / (1 - config.augment_scale):.3g}: with '
        f'augment_scale={config.augment_scale} the width would shrink to {width_zoom:.3g}, below '
        f'{MIN_ZOOM} (the training step\'s warp has no antialiasing filter for more)')
  if config.warmup_epochs > config.num_epochs:
    bad('warmup_epochs', f'<= num_epochs ({config.num_epochs})')
  return found


def check(config, num_devices=1):
  """Raises ConfigError listing every problem of `config`, or returns it."""
  found = problems(config, num_devices)
  if found:
    raise ConfigError('\n'.join(found) if len(found) > 1 else found[0])
  return config
