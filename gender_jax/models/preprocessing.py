"""Input preprocessing, named and bound to the weights it belongs to.

Pretrained bases only work when fed images normalised the way they were trained: the name is
stored in the converted weights' metadata and every consumer looks it up here, so VGGFace weights
never see ImageNet-normalised images by mistake.
"""
import numpy as np

# Per-channel means in BGR order, as subtracted by each original Keras implementation.
_BGR_MEANS = {
    # keras.applications.imagenet_utils.preprocess_input(mode='caffe')
    'caffe_imagenet': (103.939, 116.779, 123.68),
    # keras_vggface.utils.preprocess_input(version=1)
    'vggface_v1': (93.5940, 104.7624, 129.1863),
}
# face-api's FaceRecognitionNet (dlib's face ResNet, gender_jax.models.face_resnet) takes
# (x - mean) / 255 per RGB channel. dlib's own input layer has the same means but divides by 256;
# the weights are checked against face-api, so its scaling is kept.
FACE_API_MEAN_RGB = (122.782, 117.001, 104.298)
PREPROCESSINGS = (*_BGR_MEANS, 'face_api', 'unit')


def preprocess(images, name):
  """Maps RGB images (uint8 or float in 0..255, channels last) to the base's input.

  Works on numpy and jax arrays alike, so it can run inside a jitted model.
  """
  if name == 'unit':
    return images.astype('float32') / 255.0
  if name == 'face_api':
    return (images.astype('float32') - np.asarray(FACE_API_MEAN_RGB, np.float32)) / 255
  if name not in _BGR_MEANS:
    raise ValueError(f'Unknown preprocessing {name!r}; expected one of {PREPROCESSINGS}.')
  bgr = images[..., ::-1].astype('float32')
  return bgr - np.asarray(_BGR_MEANS[name], dtype=np.float32)
