"""Reads PyTorch's legacy (non-zip) .pt files into numpy arrays, without importing torch.

torch.save wrote this format before PyTorch 1.6 (torch/serialization.py, `_legacy_save`), and
facenet-pytorch's MTCNN weights are in it. Five pickles back to back: a magic number, the
protocol version (1001), sys info (endianness, type sizes), the saved object, whose tensors name
their storage through a persistent id ('storage', storage type, key, location, element count,
view), and the list of storage keys; then for each key in that order an int64 element count and
the storage's raw bytes. Only the few globals a state dict of tensors needs can be unpickled, so
a file cannot run code while it is read.
"""
import collections
import io
import pickle
import struct

import numpy as np

MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
PROTOCOL_VERSION = 1001
_DTYPE_OF_STORAGE = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}


class TorchFileError(ValueError):
  """Not a legacy .pt file this reader can read; the message says what was found instead."""


class _StorageType:
  def __init__(self, name):
    self.name, self.dtype = name, np.dtype(_DTYPE_OF_STORAGE[name]).newbyteorder('<')


class _Storage:
  def __init__(self, storage_type, key, numel):
    self.dtype, self.key, self.numel = storage_type.dtype, key, numel
    self.array = None  # Filled in once the raw bytes after the pickles are read.


class _Tensor:
  """A tensor whose storage bytes come later in the file; `resolve` makes it a numpy array."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def resolve(self):
    flat, itemsize = self.storage.array, self.storage.dtype.itemsize
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n > 0)
    if self.offset < 0 or min(self.stride, default=0) < 0 or (
        0 not in self.size and last >= flat.size):
      raise TorchFileError(f'a tensor of size {self.size}, stride {self.stride} at offset '
                           f'{self.offset} lies outside its storage of {flat.size} elements')
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], self.size, [s * itemsize for s in self.stride], writeable=False)
    return np.array(view, dtype=self.storage.dtype.newbyteorder('='))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,  # pylint: disable=unused-argument
                       backward_hooks=None, metadata=None):
  return _Tensor(storage, storage_offset, size, stride)


class _Unpickler(pickle.Unpickler):
  """Unpickles a state dict: tensors become _Tensor placeholders, nothing else is allowed."""

  def __init__(self, file):
    super().__init__(file)
    self.storages = {}

  def find_class(self, module, name):
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
      return _rebuild_tensor_v2
    if module == 'torch' and name in _DTYPE_OF_STORAGE:
      return _StorageType(name)
    raise TorchFileError(f'it pickles {module}.{name}, which is not part of a state dict of '
                         f'tensors')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == 'storage' and
            isinstance(pid[1], _StorageType)):
      raise TorchFileError(f'unexpected persistent id {pid!r:.80}')
    _, storage_type, key, _, numel, view = pid
    if view is not None:  # Storage views: only torch < 0.4 wrote them.
      raise TorchFileError(f'storage {key} is a view of another storage (torch < 0.4)')
    storage = self.storages.setdefault(key, _Storage(storage_type, key, numel))
    if storage.dtype != storage_type.dtype or storage.numel != numel:
      raise TorchFileError(f'storage {key} is declared twice, differently')
    return storage


def _resolve(obj):
  if isinstance(obj, _Tensor):
    return obj.resolve()
  if isinstance(obj, dict):
    return {k: _resolve(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v) for v in obj)
  return obj


def loads(data):
  """The object saved in legacy .pt bytes, with every tensor as a numpy array.

  Raises TorchFileError for anything else (a zip-format .pt, another pickle, a truncated file).
  """
  if data[:2] == b'PK':
    raise TorchFileError('a zip-format .pt (torch >= 1.6); expected the legacy format')
  f = io.BytesIO(data)
  try:
    magic = pickle.load(f)
    if magic != MAGIC_NUMBER:
      raise TorchFileError(f'no PyTorch magic number at the start (found {magic!r:.40})')
    version = pickle.load(f)
    if version != PROTOCOL_VERSION:
      raise TorchFileError(f'protocol version {version!r:.40}, expected {PROTOCOL_VERSION}')
    sys_info = pickle.load(f)
    if not (isinstance(sys_info, dict) and sys_info.get('little_endian')):
      raise TorchFileError('written on a big-endian machine; expected little-endian')
    unpickler = _Unpickler(f)
    obj = unpickler.load()
    keys = pickle.load(f)
    if sorted(map(str, keys)) != sorted(map(str, unpickler.storages)):
      raise TorchFileError(f'its storage list {keys!r:.80} does not match the tensors')
    for key in keys:
      storage = unpickler.storages[key]
      count = f.read(8)
      if len(count) != 8:
        raise TorchFileError(f'truncated before storage {key}')
      numel, = struct.unpack('<q', count)
      if numel != storage.numel:
        raise TorchFileError(f'storage {key} holds {numel} elements, its tensors expect '
                             f'{storage.numel}')
      raw = f.read(numel * storage.dtype.itemsize)
      if len(raw) != numel * storage.dtype.itemsize:
        raise TorchFileError(f'truncated in storage {key}')
      storage.array = np.frombuffer(raw, storage.dtype)
  except TorchFileError:
    raise
  except (pickle.UnpicklingError, EOFError, struct.error, ValueError, TypeError,
          AttributeError, IndexError, KeyError) as e:
    raise TorchFileError(f'not a readable legacy .pt file ({type(e).__name__}: '
                         f'{str(e)[:80]})') from e
  return _resolve(obj)


def load(path):
  """Reads a legacy .pt file at `path`; see `loads`."""
  with open(path, 'rb') as f:
    return loads(f.read())
