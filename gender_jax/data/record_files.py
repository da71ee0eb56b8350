"""Arrays of one row per dataset record, on disk, read and written a few rows at a time.

The decoded images and the frozen-base features are kept as .npy files with a row per record of
their dataset split. They are read with pread and written with pwrite, not memory-mapped: the
pages of a mapped file count as the process's resident memory once touched, so a pass over a
large dataset would hold the whole file; this way memory holds the rows in use. `CheckedRows`
keeps a checksum of every row it writes, so a damaged cache is made again, never read. A write
that fails (a full disk) names its file, which os.pwrite's errors do not.
"""
import contextlib
import os
import zlib

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
    if fortran_order:
      raise ValueError(f'{path} is in Fortran order; this cache writes C order.')
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
    with _named(self.path):
      for row, value in zip(rows, values):
        os.pwrite(self._fd, value.tobytes(), self.offset + int(row) * self.row_bytes)

  def flush(self):
    with _named(self.path):
      os.fsync(self._fd)

  def __del__(self):
    if hasattr(self, '_fd'):
      os.close(self._fd)


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


class CheckedRows:
  """A cache of one row per record that proves what it holds: base.npy (a RecordArray) beside
  base.rows.npy, the crc32 of each filled row (-1: not filled).

  A row counts as filled only while its bytes still match the checksum written with it, so an
  array file deleted, cut short, replaced or altered after it was written is made again, never
  read as zeros or as another cache's rows.
  """

  def __init__(self, base, count, row_shape=None, dtype=None):
    """Opens base's cache of `count` rows; with row_shape and dtype, makes the array if needed
    (else the first `write` makes it)."""
    self.base, self.count = base, count
    self.array = _whole_array(base + '.npy', count, row_shape, dtype)
    if self.array is None:
      self.sums = np.full(count, -1, np.int64)
      if row_shape is not None:
        self.array = RecordArray(base + '.npy', (count, *row_shape), dtype)
    else:
      self.sums = _read_sums(base + '.rows.npy', count)

  def filled(self, rows):
    """Which of `rows` hold what was written to them; rows that no longer match are forgotten."""
    rows = np.asarray(rows)
    for start in range(0, len(rows), _VERIFY_WINDOW):
      window = rows[start:start + _VERIFY_WINDOW]
      window = window[self.sums[window] >= 0]
      if len(window):
        changed = window[_row_sums(self.array[window]) != self.sums[window]]
        self.sums[changed] = -1
    return self.sums[rows] >= 0

  def __setitem__(self, rows, values):
    """Writes values into `rows` and records their checksums (saved by `commit`)."""
    rows = np.asarray(rows).reshape(-1)
    values = np.asarray(values)
    if self.array is None:
      self.array = RecordArray(self.base + '.npy', (self.count, *values.shape[1:]), values.dtype)
    values = values.reshape(len(rows), *self.array.shape[1:])
    self.array[rows] = values
    self.sums[rows] = _row_sums(values)

  def commit(self):
    """Makes the written rows durable, then their checksums, atomically."""
    self.array.flush()
    # full_disk.replacing, written out: importing it here would make the package's longest
    # import chain longer than tests/test_layout.py allows.
    tmp = f'{self.base}.rows.{os.getpid()}.tmp.npy'
    try:
      with _named(tmp):
        np.save(tmp, self.sums)
      os.replace(tmp, self.base + '.rows.npy')
    finally:
      with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)  # Left where saving failed.


_VERIFY_WINDOW = 1024  # Rows read at once to check their checksums: bounds the memory held.


@contextlib.contextmanager
def _named(path):
  """OSErrors in the block name `path`."""
  try:
    yield
  except OSError as e:
    if e.filename:
      raise
    raise OSError(e.errno, e.strerror, path) from e


def _row_sums(values):
  values = np.ascontiguousarray(values)
  return np.array([zlib.crc32(row.tobytes()) for row in values.reshape(len(values), -1)],
                  np.int64)


def _whole_array(path, count, row_shape, dtype):
  """The RecordArray at path if it is whole, of `count` rows and of row_shape and dtype where
  given; None where it is missing, cut short or another array."""
  try:
    array = RecordArray(path)
    size = os.path.getsize(path)
  except (OSError, ValueError):  # Missing, or not a .npy file (a damaged header).
    return None
  expected = (count, *(array.shape[1:] if row_shape is None else row_shape))
  if (array.shape != tuple(expected) or (dtype is not None and array.dtype != np.dtype(dtype))
      or size != array.offset + count * array.row_bytes):
    return None
  return array


def _read_sums(path, count):
  """The saved checksums, or none filled where the file is missing or damaged."""
  try:
    sums = np.load(path)
  except (OSError, ValueError, EOFError):
    return np.full(count, -1, np.int64)
  return sums if sums.shape == (count,) and sums.dtype == np.int64 else np.full(count, -1, np.int64)
