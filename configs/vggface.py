"""Frozen VGGFace (VGG16 architecture, face-recognition weights), a dense head on top."""
from configs import default


def get_config():
  config = default.get_config()
  config.model = 'vggface'
  config.weights = 'weights/vggface'
  return config
