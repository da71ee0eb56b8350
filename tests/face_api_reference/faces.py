"""The eight CelebA test faces the face-api reference descriptors were computed on, as 150x150
RGB: decoded and centre-cropped as gender_jax does (image_files.decode_rgb, align.resize_image).

  python tests/face_api_reference/faces.py /tmp/faces.rgb  # raw uint8 (8, 150, 150, 3) for Node
"""
import pathlib
import sys

import numpy as np

from gender_jax.data import image_files
from gender_jax.faces import align

SIZE = 150
# Relative to ../shared/data/celeba_gender; four of each label, the first in name order. The
# images stay there (CelebA's licence): only these names and the descriptors are in the repo.
NAMES = ('test/female/000001.jpg', 'test/female/000026.jpg', 'test/female/000071.jpg',
         'test/female/000098.jpg', 'test/male/000033.jpg', 'test/male/000038.jpg',
         'test/male/000048.jpg', 'test/male/000052.jpg')
CELEBA_GENDER = pathlib.Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'celeba_gender'


def load(root=CELEBA_GENDER):
  """The faces as a uint8 (8, 150, 150, 3) array, in NAMES order."""
  root = pathlib.Path(root)
  return np.stack([align.resize_image(image_files.decode_rgb((root / name).read_bytes()), SIZE,
                                      'center_crop') for name in NAMES])


if __name__ == '__main__':
  pathlib.Path(sys.argv[1]).write_bytes(load().tobytes())
