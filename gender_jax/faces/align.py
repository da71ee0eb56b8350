"""How an image becomes the model's input: resized whole, or its face found and aligned.

With config.face_align 'none' the whole image is resized to a square (config.resize). With
'mtcnn', MTCNN finds each face with five landmarks (eyes, nose, mouth corners) and a similarity
transform (rotation, uniform scale, shift) puts them onto the run's template inside a square of
config.image_size. The dataset build, evaluation and prediction all use the functions here, so a
model always sees faces the way it was trained on them.

The template is derived from the training faces themselves (their mean landmarks, in the frame
that config.resize cuts from each image), so aligned CelebA crops look like CelebA crops; zoom
> 1 enlarges the face about its centre, trading hair and background for face.
"""
import numpy as np
from PIL import Image

RESIZES = ('stretch', 'center_crop')
# Pillow's bilinear filter (it widens its support when shrinking, so downscaling is antialiased).
RESIZE_FILTER = Image.Resampling.BILINEAR
NUM_LANDMARKS = 5


def resize_image(image, size, resize='stretch'):
  """Resizes an RGB Pillow image to a uint8 (size, size, 3) array: stretched or centre-cropped."""
  if resize == 'center_crop':
    # Cropped first: resize(box=...) would let the filter read pixels outside the square.
    left, top, side = _center_square(image.width, image.height)
    image = image.crop((left, top, left + side, top + side))
  elif resize != 'stretch':
    raise ValueError(f'Unknown resize {resize!r}; expected one of {RESIZES}.')
  return np.asarray(image.resize((size, size), RESIZE_FILTER))


def _center_square(width, height):
  side = min(width, height)
  return (width - side) // 2, (height - side) // 2, side


def _frame(width, height, resize):
  """(left, top, width, height) of the part of an image that `resize` maps onto the square."""
  if resize == 'center_crop':
    left, top, side = _center_square(width, height)
    return left, top, side, side
  return 0, 0, width, height


def derive_template(landmarks, image_sizes, resize='stretch', zoom=1.0):
  """The mean landmarks of training faces, as (5, 2) fractions of the model's square input.

  landmarks: (N, 5, 2) pixel (x, y); image_sizes: (N, 2) (width, height). Each face is placed
  where `resize` would put it in the square, so on aligned crops the aligned input matches the
  resized one; zoom scales the template about its centroid.
  """
  landmarks = np.asarray(landmarks, np.float64)
  if not len(landmarks):
    raise ValueError('No training face was found to derive the alignment template from.')
  frames = np.array([_frame(w, h, resize) for w, h in image_sizes], np.float64)
  unit = (landmarks - frames[:, None, :2]) / frames[:, None, 2:]
  mean = unit.mean(axis=0)
  centre = mean.mean(axis=0)
  return (centre + zoom * (mean - centre)).astype(np.float32)


def similarity_transform(src, dst):
  """The 2x3 matrix of the rotation, uniform scale and shift that best maps src onto dst.

  Least squares over the points (Umeyama 1991), without reflection; src, dst: (K, 2).
  """
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  src_mean, dst_mean = src.mean(0), dst.mean(0)
  src_c, dst_c = src - src_mean, dst - dst_mean
  u, s, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
  d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
  rotation = u @ d @ vt
  scale = np.trace(np.diag(s) @ d) / src_c.var(0).sum()
  shift = dst_mean - scale * rotation @ src_mean
  return np.hstack([scale * rotation, shift[:, None]])


def warp_affine(image, matrix, size):
  """uint8 (size, size, 3): out[p] = image[matrix^-1 p], bilinear, edge pixels repeated outside.

  Coordinates are continuous with the image's top-left corner at 0 (pixel centres at +0.5), as
  Pillow's transform uses them. A warp that shrinks first resizes the image with Pillow's
  antialiasing filter, so small outputs of large photos do not alias.
  """
  image = np.asarray(image)
  matrix = np.vstack([matrix, [0.0, 0.0, 1.0]])
  scale = np.sqrt(abs(np.linalg.det(matrix[:2, :2])))
  height, width = image.shape[:2]
  if scale < 2 / 3:  # More than 1.5 source pixels per output pixel.
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    image = np.asarray(Image.fromarray(image).resize((new_w, new_h), RESIZE_FILTER))
    matrix = matrix @ np.diag([width / new_w, height / new_h, 1.0])
    height, width = new_h, new_w
  inverse = np.linalg.inv(matrix)
  corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64)
  reach = corners @ inverse.T
  limit = 2 * max(width, height)  # Enough for any sane face; a wild transform just repeats edges.
  pad = int(np.clip(np.ceil(max(0.0, -reach[:, :2].min(), (reach[:, 0] - width).max(),
                                (reach[:, 1] - height).max())) + 1, 1, limit))
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode='edge')
  inverse = np.array([[1, 0, pad], [0, 1, pad], [0, 0, 1]], np.float64) @ inverse
  out = Image.fromarray(padded).transform((size, size), Image.Transform.AFFINE,
                                          tuple(inverse[:2].ravel()), Image.Resampling.BILINEAR)
  return np.asarray(out)


def align_face(image, landmarks, template, size):
  """The face with these (5, 2) pixel landmarks, warped so they sit on the template."""
  matrix = similarity_transform(landmarks, np.asarray(template, np.float64) * size)
  return warp_affine(image, matrix, size)


def largest_face(faces):
  """Index of the face with the largest box (the subject of a portrait or crop); None if none."""
  if not len(faces.boxes):
    return None
  widths, heights = (faces.boxes[:, 2:] - faces.boxes[:, :2]).T
  return int(np.argmax(widths * heights))
