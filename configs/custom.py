"""The custom CNN trained from scratch (the study's "untrained" model)."""
from configs import default


def get_config():
  config = default.get_config()
  config.model = 'custom'
  config.image_size = 96
  config.head_pooling = 'flatten'
  config.learning_rate = 1e-3
  config.num_epochs = 15
  config.augment_shift = 0.1
  config.lr_schedule = 'cosine'
  return config
