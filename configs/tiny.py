"""A tiny config for tests: a few dozen small images, narrow layers, two epochs.

Use as `--config=configs/tiny.py:custom` (or `:vgg16`, `:vggface`, `:face_resnet`).
"""
from gender_jax import base_config


def get_config(model='custom'):
  config = base_config.get_config()
  config.model = model
  config.weights = ''
  config.num_train = 32
  config.num_valid = 16
  config.num_test = 16
  # The smallest input VGG16's five pools accept; face_resnet's unpadded layers need 71 px.
  config.image_size = 72 if model == 'face_resnet' else 32
  config.custom_channels = (4, 8)
  config.custom_norm = 'batch'  # As configs/custom.py, so the tests cover batch_stats.
  config.head_hidden = (8,)
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_epochs = 2
  config.learning_rate = 1e-3
  config.augment_shift = 0.1 if model == 'custom' else 0.0
  return config
