"""P-Net's image pyramid: its scales, P-Net's output cells on each level, and the size buckets
the cascade (gender_jax/faces/detect.py) pads images, levels and counts to, so that few shapes
get compiled.
"""
import numpy as np


def scales(height, width, min_face_size=20, factor=0.709):
  """P-Net's scales: a min_face_size face becomes 12 px, then x factor while the short side
  stays >= 12 px (Python floats, as detect_face, so the level sizes are the same)."""
  scale = 12.0 / min_face_size
  short = min(height, width) * scale
  found = []
  while short >= 12:
    found.append(scale)
    scale *= factor
    short *= factor
  return found


def pnet_cells(size):
  """P-Net's output cells along an input side of `size` px (conv 3, ceil-mode pool 2, conv 3,
  conv 3)."""
  return -(-(size - 2) // 2) - 4


def bucket(n, per_octave, smallest=1):
  """n rounded up to one of `per_octave` (a power of two) sizes per octave, at least
  `smallest`: at most 1/per_octave is padding, and the shapes that get compiled stay few."""
  n = max(n, smallest)
  step = 1 << max(0, n.bit_length() - per_octave.bit_length())
  return -(-n // step) * step


def cell_grid(plan):
  """x, y, scale and level of each P-Net cell of a plan's levels ((scale, h, w) each), level by
  level in row-major order, padded to a power of two."""
  parts = [np.zeros((0, 4))]
  for level, (scale, h, w) in enumerate(plan):
    y, x = np.mgrid[:pnet_cells(h), :pnet_cells(w)].reshape(2, -1)
    parts.append(np.stack([x, y, np.full(x.shape, scale), np.full(x.shape, level)], axis=-1))
  grid = np.concatenate(parts)
  return np.pad(grid, ((0, bucket(len(grid), 1) - len(grid)), (0, 0))).astype(np.float32)
