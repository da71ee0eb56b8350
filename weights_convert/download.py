"""Fetches the public weight files into a cache folder and verifies them: the notop VGG16 h5
files, and the facenet-pytorch wheel that holds MTCNN's weights."""
import hashlib
import pathlib
import urllib.request

import tqdm

import gender_jax
from gender_jax.models import pretrained
from weights_convert import convert, mtcnn

DEFAULT_CACHE_DIR = gender_jax.cache_dir('weights')
# keras/src/applications/vgg16.py publishes the ImageNet file's MD5; rcmalli published no hash,
# so its sha256 is recorded in the metadata and can be pinned with --sha256.
MD5_OF_SOURCE = {'imagenet': '6d6bbae143d832006294945121d1f1fc'}
# PyPI's sha256 of facenet_pytorch-2.6.0-py3-none-any.whl, pinned here.
SHA256_OF_SOURCE = {'mtcnn': mtcnn.WHEEL_SHA256}
# Seconds to wait for the server: offline, fail at once rather than hang.
TIMEOUT_S = 15


class DownloadError(convert.ConversionError):
  """The file could not be fetched or is not the published one."""


def _digest(path, algorithm):
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, algorithm).hexdigest()


def verify(source, path, sha256=None):
  """Checks `path` against the source's published hash and the pinned `sha256`, if any."""
  checks = [('md5', MD5_OF_SOURCE.get(source), 'published by Keras'),
            ('sha256', SHA256_OF_SOURCE.get(source), 'of facenet-pytorch 2.6.0 on PyPI'),
            ('sha256', sha256 and sha256.lower(), 'pinned by --sha256')]
  for algorithm, expected, why in checks:
    if expected and (digest := _digest(path, algorithm)) != expected:
      raise DownloadError(f'{path}: {algorithm} is {digest}, expected {expected} ({why}); '
                          f'not the file asked for.')


def _download(url, path, timeout_s):
  with urllib.request.urlopen(url, timeout=timeout_s) as response:
    size = int(response.headers.get('Content-Length') or 0) or None
    with open(path, 'wb') as f, tqdm.tqdm(total=size, unit='B', unit_scale=True,
                                          unit_divisor=1024, desc=path.name) as bar:
      while chunk := response.read(1 << 20):
        f.write(chunk)
        bar.update(len(chunk))
  if size is not None and path.stat().st_size != size:
    raise OSError(f'got {path.stat().st_size} of {size} bytes')


def url_of(source):
  """The public file a source's weights come from."""
  return mtcnn.WHEEL_URL if source == 'mtcnn' else pretrained.H5_URL_OF_SOURCE[source]


def fetch(source, cache_dir=DEFAULT_CACHE_DIR, sha256=None, timeout_s=TIMEOUT_S):
  """Returns the verified file of `source` in `cache_dir` (its notop h5; for mtcnn the
  facenet-pytorch wheel), downloading it if not there yet.

  The download goes to a `.part` file, renamed only when complete and verified, so the cache
  never holds half a file or the wrong one.
  """
  url = url_of(source)
  path = pathlib.Path(cache_dir).expanduser().absolute() / url.rsplit('/', 1)[-1]
  if path.exists():
    try:
      verify(source, path, sha256)
    except DownloadError as e:
      raise DownloadError(f'{e} Delete the cached file to download it again.') from e
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  part = path.with_name(path.name + '.part')
  try:
    _download(url, part, timeout_s)
    verify(source, part, sha256)
  except OSError as e:
    part.unlink(missing_ok=True)
    raise DownloadError(
        f'could not download {url} ({e}). Where this machine is offline, fetch the file '
        f'elsewhere and put it at {path} (where --download looks first), or anywhere and '
        f'convert it with: python -m weights_convert --source {source} '
        f'{"--wheel" if source == "mtcnn" else "--h5"} FILE --out DIR'
    ) from e
  except DownloadError:
    part.unlink()
    raise
  part.rename(path)
  return path
