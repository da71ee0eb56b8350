"""Frozen VGG16 with ImageNet weights (Keras), a dense head trained on top."""
from gender_jax import base_config


def get_config():
  config = base_config.get_config()
  config.model = 'vgg16'
  config.weights = 'weights/imagenet'
  return config
