"""Arrays of one row per dataset record, on disk, read and written a few rows at a time.

The decoded images and the frozen-base features are kept as .npy files with a row per record of
their dataset split. They are read with pread and written with pwrite, not memory-mapped: the
pages of a mapped file count as the process's resident memory once touched, so a pass over a
large dataset would hold the whole file; this way memory holds the rows in use.
"""
import os

import numpy as np


class RecordArray:
  """A .npy file of rows (count, *row_shape), created zero-filled or opened as it is."""

  def __init__(self, path, shape=None, dtype=None):
    self.path = path
    if shape is not None:  # Create: the header, then a sparse file of zeros.
      with open(path, 'wb') as f:
        np.lib.format.write_array_header_1_0(
            f, {'descr': np.lib.format.dtype_to_descr(np.dtype(dtype)), 'fortran_order': False,
                'shape': tuple(shape)})
        self.offset = f.tell()
        f.truncate(self.offset + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    with open(path, 'rb') as f:
      version = np.lib.format.read_magic(f)
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                     np.lib.format.read_array_header_2_0)
      self.shape, fortran_order, self.dtype = read_header(f)
      self.offset = f.tell()
    assert not fortran_order, path
    self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
    self._fd = os.open(path, os.O_RDWR if os.access(path, os.W_OK) else os.O_RDONLY)

  def __len__(self):
    return self.shape[0]

  def __getitem__(self, rows):
    """The rows at `rows` (an int or an array of ints), read from disk."""
    rows = np.asarray(rows)
    out = np.empty((rows.size, *self.shape[1:]), self.dtype)
    for i, row in enumerate(rows.reshape(-1)):
      data = os.pread(self._fd, self.row_bytes, self.offset + int(row) * self.row_bytes)
      out[i] = np.frombuffer(data, self.dtype).reshape(self.shape[1:])
    return out[0] if rows.ndim == 0 else out.reshape(*rows.shape, *self.shape[1:])

  def __setitem__(self, rows, values):
    rows = np.asarray(rows).reshape(-1)
    values = np.ascontiguousarray(values, self.dtype).reshape(len(rows), *self.shape[1:])
    for row, value in zip(rows, values):
      os.pwrite(self._fd, value.tobytes(), self.offset + int(row) * self.row_bytes)

  def flush(self):
    os.fsync(self._fd)

  def __del__(self):
    if hasattr(self, '_fd'):
      os.close(self._fd)


def open_array(base, shape, dtype):
  """The cache's rows, base.npy: created zero-filled with `shape` where it does not exist yet."""
  path = base + '.npy'
  return RecordArray(path) if os.path.exists(path) else RecordArray(path, shape, dtype)


def read_done(base, count):
  """Which of the cache's `count` rows are filled (its mask is saved after them: they are whole)."""
  path = base + '.done.npy'
  return np.load(path) if os.path.exists(path) else np.zeros(count, bool)


def write_done(base, done):
  """Saves the mask of filled rows, atomically, once the rows themselves are on disk."""
  np.save(base + '.done.tmp.npy', done)
  os.replace(base + '.done.tmp.npy', base + '.done.npy')


class Rows:
  """Some rows of an array (a RecordArray on disk, or numpy in memory), read when indexed."""

  def __init__(self, array, rows=None):
    self.array = array
    self.rows = np.arange(len(array)) if rows is None else np.asarray(rows)

  def __len__(self):
    return len(self.rows)

  @property
  def shape(self):
    return (len(self.rows), *self.array.shape[1:])

  @property
  def dtype(self):
    return self.array.dtype

  def __getitem__(self, index):
    """The rows at `index` (an int, slice, index array or mask), read into memory."""
    return np.asarray(self.array[self.rows[index]])

  def __array__(self, dtype=None, copy=None):
    return np.asarray(self[:], dtype)

  def __iter__(self):
    return (self[i] for i in range(len(self)))

  def subset(self, index):
    """The rows at `index`, still where they are."""
    return Rows(self.array, self.rows[index])
