"""Image files to RGB images: the one decoder every path uses.

The dataset build checks each file with `decode_rgb`, the input pipeline decodes records and
folders with it and prediction decodes photos with it, so a model sees a file's pixels the same
way in training, evaluation and prediction, and a bad file is refused everywhere with the same
words (`BadImageError`: truncated JPEG, text file, PDF...).
"""
import io
import os
import re

import numpy as np
from PIL import Image
from PIL import ImageFile
from PIL import ImageOps

# A truncated JPEG must fail to decode, not come back with grey rows, even if some other import
# switched Pillow to tolerate it.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# What a file that Pillow cannot identify starts with: (offset, bytes, what it is).
_IMAGE_SIGNATURES = ((0, b'\xff\xd8\xff', 'JPEG'), (0, b'\x89PNG', 'PNG'), (0, b'GIF8', 'GIF'),
                     (8, b'WEBP', 'WebP'), (0, b'II*\0', 'TIFF'), (0, b'MM\0*', 'TIFF'))
_OTHER_SIGNATURES = ((0, b'%PDF', 'a PDF'), (0, b'PK\x03\x04', 'a ZIP archive'),
                     (0, b'\x1f\x8b', 'a gzip archive'), (4, b'ftyp', 'an HEIC photo or a video'))
_TEXT_BYTES = bytes(range(32, 256)) + b'\t\n\r\f'


class BadImageError(ValueError):
  """A file that cannot be decoded to an RGB image; the message is the reason."""


def printable(path):
  """A path as text that prints and writes anywhere: the bytes of a file name that is not valid
  UTF-8 shown as \\x.. escapes (os.fsencode gives them back as the file system stores them)."""
  return os.fsencode(path).decode('utf-8', 'backslashreplace')


def is_utf8(path):
  return printable(path) == path


def to_rgb(image):
  """Any Pillow image (grey, palette, RGBA, CMYK, 16-bit...) -> an upright 8-bit RGB image.

  16-bit grey is scaled to 8 bits (convert would clip it) and transparent pixels are shown over
  white, as an image viewer would.
  """
  image = ImageOps.exif_transpose(image)
  if image.mode.startswith('I'):  # 'I;16*' (16-bit PNG), or 'I' (32-bit int) in 16-bit range.
    image = Image.fromarray(
        np.round(np.clip(np.asarray(image, np.float64), 0, 65535) / 257).astype(np.uint8))
  if image.mode in ('RGBA', 'LA', 'PA', 'La', 'RGBa') or 'transparency' in image.info:
    image = Image.alpha_composite(Image.new('RGBA', image.size, (255, 255, 255, 255)),
                                  image.convert('RGBA'))
  return image if image.mode == 'RGB' else image.convert('RGB')


def _starts_as(data, signatures):
  return next((name for at, magic, name in signatures if data[at:at + len(magic)] == magic), None)


def _unidentified(data):
  """Why Pillow found no image in `data`, from what the file looks like instead."""
  image_format, other = _starts_as(data, _IMAGE_SIGNATURES), _starts_as(data, _OTHER_SIGNATURES)
  if image_format:
    return f'damaged {image_format} (starts like one, but Pillow cannot open it)'
  if not other and not data[:512].translate(None, _TEXT_BYTES):
    return 'a text file, not an image'
  return (f'not an image Pillow can read (starts with bytes {data[:4].hex(" ")}'
          + (f': {other}?)' if other else ')'))


def decode_rgb(data):
  """Decodes an image file's bytes to an RGB Pillow image; raises BadImageError saying why not."""
  if not data:
    raise BadImageError('empty file (0 bytes)')
  image_format = _starts_as(data, _IMAGE_SIGNATURES) or 'image'  # If Image.open fails midway.
  try:
    with Image.open(io.BytesIO(data)) as image:
      image_format = image.format or image_format
      image.load()  # Image.open only reads the header; truncation shows up here.
      return to_rgb(image)
  except Image.UnidentifiedImageError as e:
    raise BadImageError(_unidentified(data)) from e
  # Pillow reports malformed files with many exception types (OSError, SyntaxError, struct.error,
  # ValueError, ...); any of them means this file cannot be used.
  except Exception as e:  # pylint: disable=broad-except
    message = re.sub(r'\s*<[^>]* at 0x[0-9a-f]+>', '', str(e)).strip()  # No object reprs.
    if isinstance(e, EOFError) or 'truncated' in message.lower():
      raise BadImageError(f'truncated {image_format} (decodes partly)') from e
    raise BadImageError(f'damaged {image_format}'
                        + (f' (Pillow: {message})' if message else '')) from e
