"""How an image becomes the model's input, decided in one place: `FaceInput`.

Built from a config's image_size, resize, face_align, face_template, face_zoom, face_missing and
face_detector_weights. The data loading, its caches, evaluation and prediction all make inputs
through it, so a model sees a face the same way in training and in use.
"""
import dataclasses
import hashlib

import numpy as np

from gender_jax.faces import align

FACE_ALIGNS = ('none', 'mtcnn')
MISSING = ('resize', 'drop')


@dataclasses.dataclass(frozen=True)
class FaceInput:
  """A square of `size` px: the whole image resized (`resize`), or, with `align` 'mtcnn', the face
  aligned onto `template` (10 floats: x, y of 5 landmarks as fractions of the square; empty until
  derived from the training faces, scaled by `zoom`). `missing`: what becomes of an image where no
  face is found ('resize' it whole, or 'drop' it)."""
  size: int
  resize: str = 'stretch'
  align: str = 'none'
  template: tuple = ()
  zoom: float = 1.0
  missing: str = 'resize'
  detector_weights: str = ''

  @classmethod
  def from_config(cls, config):
    return cls(size=int(config.image_size), resize=config.resize, align=config.face_align,
               template=tuple(float(v) for v in config.face_template),
               zoom=float(config.face_zoom), missing=config.face_missing,
               detector_weights=config.face_detector_weights)

  @property
  def aligns(self):
    """Whether faces are found and aligned (else images are resized whole)."""
    return self.align != 'none'

  def with_derived_template(self, landmarks, image_sizes):
    """This, with an empty template derived from training faces' landmarks (N, 5, 2) in images of
    image_sizes (N, 2: width, height); unchanged where it has one or does not align."""
    if not self.aligns or self.template:
      return self
    template = align.derive_template(landmarks, image_sizes, self.resize, self.zoom)
    return dataclasses.replace(self, template=tuple(round(float(v), 6) for v in template.ravel()))

  def _template_points(self):
    if not self.template:
      raise ValueError('The face template is empty: derive it from the training faces first.')
    return np.asarray(self.template, np.float32).reshape(align.NUM_LANDMARKS, 2)

  def inputs(self, image, landmarks=None):
    """uint8 (size, size, 3): the face aligned by its landmarks (5, 2), or, without them, the image
    resized whole. `image`: a Pillow image or an RGB array."""
    if landmarks is None:
      return align.resize_image(image, self.size, self.resize)
    return align.align_face(np.asarray(image), landmarks, self._template_points(), self.size)

  def cache_key(self, detector_id=None):
    """Names what inputs are made with: size, resize and, if aligned, detector and template."""
    key = f'{self.size}px-{self.resize}'
    if self.aligns:
      template = self._template_points().tobytes()
      key += f'-{self.align}-{detector_id}-{hashlib.sha256(template).hexdigest()[:12]}'
    return key
