"""Frozen VGG16 with ImageNet weights (Keras), a dense head trained on top."""
from configs import default


def get_config():
  config = default.get_config()
  config.model = 'vgg16'
  config.weights = 'weights/imagenet'
  return config
