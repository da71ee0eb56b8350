"""Frozen VGGFace (VGG16 architecture, face-recognition weights), a dense head on top."""
from gender_jax import base_config


def get_config():
  config = base_config.get_config()
  config.model = 'vggface'
  config.weights = 'weights/vggface'
  return config
