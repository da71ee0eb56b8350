"""Fetches the public weight files into a cache folder and verifies them: the notop VGG16 h5
files (from their publishers), the facenet-pytorch wheel that holds MTCNN's weights (with
`pip download`, through the user's own pip configuration) and face-api's npm tarball that holds
the face-recognition ResNet's (with `npm pack`, through the user's own npm configuration)."""
import hashlib
import pathlib
import subprocess
import sys
import tempfile
import urllib.request

import tqdm

import gender_jax
from gender_jax.models import pretrained
from weights_convert import convert, face_resnet, mtcnn

DEFAULT_CACHE_DIR = gender_jax.cache_dir('weights')
# keras/src/applications/vgg16.py publishes the ImageNet file's MD5; rcmalli published no hash,
# so its sha256 is recorded in the metadata and can be pinned with --sha256.
MD5_OF_SOURCE = {'imagenet': '6d6bbae143d832006294945121d1f1fc'}
# The package index's sha256 of facenet_pytorch-2.6.0-py3-none-any.whl, pinned here.
SHA256_OF_SOURCE = {'mtcnn': mtcnn.WHEEL_SHA256, 'face_resnet': face_resnet.TARBALL_SHA256}
# What `npm pack` or `pip download` fetches for a source, and the file it gives.
PACKAGE_OF_SOURCE = {'mtcnn': (mtcnn.WHEEL_REQUIREMENT, mtcnn.WHEEL_FILE),
                     'face_resnet': (f'{face_resnet.PACKAGE}@{face_resnet.VERSION}',
                                     face_resnet.TARBALL_FILE)}
# The release whose file is pinned, and the flag that converts a file fetched by hand.
_RELEASE = {'mtcnn': 'facenet-pytorch 2.6.0', 'face_resnet': 'face-api 1.7.15'}
_FILE_FLAG = {'mtcnn': '--wheel', 'face_resnet': '--tarball'}
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
            ('sha256', SHA256_OF_SOURCE.get(source), f'of {_RELEASE.get(source)} as published'),
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


def _pip_download(requirement, folder, timeout_s):
  """The wheel `pip download` fetches for `requirement` into `folder`; OSError if it cannot."""
  done = subprocess.run(
      [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
       '--disable-pip-version-check', '--timeout', str(timeout_s), '--dest', str(folder),
       requirement], capture_output=True, text=True, check=False)
  wheels = sorted(pathlib.Path(folder).glob('*.whl'))
  if done.returncode or not wheels:
    why = [line for line in done.stderr.splitlines() if line.strip()]
    raise OSError(f'pip download {requirement}: {why[-1] if why else "no wheel"}')
  return wheels[0]


def _npm_pack(spec, folder, timeout_s):
  """The tarball `npm pack` fetches for `spec` into `folder`; OSError if it cannot.

  Run inside `folder`, so only the user's own npm configuration (not a project's .npmrc) decides
  where from; scripts are off, and one try with a timeout, so offline fails at once.
  """
  try:
    done = subprocess.run(
        ['npm', 'pack', spec, '--ignore-scripts', '--fetch-retries=0',
         f'--fetch-timeout={timeout_s * 1000}'], cwd=folder, capture_output=True, text=True,
        check=False, timeout=timeout_s * 8)
  except subprocess.TimeoutExpired as e:
    raise OSError(f'npm pack {spec}: no answer in {e.timeout:.0f} s') from e
  except FileNotFoundError as e:
    raise OSError('npm, which fetches it, is not installed (it comes with Node.js)') from e
  tarballs = sorted(pathlib.Path(folder).glob('*.tgz'))
  if done.returncode or not tarballs:
    # npm's first message line says why; 'code X' and the like above it, the log's path below.
    lines = [line.removeprefix('npm error').strip() for line in done.stderr.splitlines()]
    why = [line for line in lines if ' ' in line and not line.startswith(('code ', 'errno ',
                                                                          'syscall '))]
    raise OSError(f'npm pack {spec}: {why[0] if why else "no tarball"}')
  return tarballs[0]


def _fetch_into(source, path, timeout_s):
  """Downloads `source`'s file into `path` (a .part file), its own way."""
  if source not in PACKAGE_OF_SOURCE:
    _download(pretrained.H5_URL_OF_SOURCE[source], path, timeout_s)
    return
  fetch_package = _npm_pack if source == 'face_resnet' else _pip_download
  with tempfile.TemporaryDirectory(dir=path.parent) as folder:
    fetch_package(PACKAGE_OF_SOURCE[source][0], folder, timeout_s).replace(path)


def fetch(source, cache_dir=DEFAULT_CACHE_DIR, sha256=None, timeout_s=TIMEOUT_S):
  """Returns the verified file of `source` in `cache_dir` (its notop h5; for mtcnn the
  facenet-pytorch wheel, for face_resnet face-api's npm tarball), downloading it if not there yet.

  The download goes to a `.part` file, renamed only when complete and verified, so the cache
  never holds half a file or the wrong one.
  """
  package, name = PACKAGE_OF_SOURCE.get(source) or (
      None, pretrained.H5_URL_OF_SOURCE[source].rsplit('/', 1)[-1])
  what = (f'{package} with {"npm" if source == "face_resnet" else "pip"}' if package
          else pretrained.H5_URL_OF_SOURCE[source])
  path = pathlib.Path(cache_dir).expanduser().absolute() / name
  if path.exists():
    try:
      verify(source, path, sha256)
    except DownloadError as e:
      raise DownloadError(f'{e} Delete the cached file to download it again.') from e
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  part = path.with_name(path.name + '.part')
  try:
    _fetch_into(source, part, timeout_s)
    verify(source, part, sha256)
  except OSError as e:
    part.unlink(missing_ok=True)
    raise DownloadError(
        f'could not download {what} ({e}). Where this machine is offline, fetch the file '
        f'elsewhere and put it at {path} (where --download looks first), or anywhere and '
        f'convert it with: python -m weights_convert --source {source} '
        f'{_FILE_FLAG.get(source, "--h5")} FILE --out DIR'
    ) from e
  except DownloadError:
    part.unlink()
    raise
  part.rename(path)
  return path
