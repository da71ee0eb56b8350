"""3x3 'SAME' convolutions by Winograd's F(2x2, 3x3): 2.25x fewer multiplications, for XLA:CPU.

XLA:CPU's direct convolutions already run VGG16 near the cores' peak (AVX2: about 160 of 190
GFLOP/s), so only fewer multiplications make its frozen base faster. Each 4x4 input tile and
each kernel is transformed (sums and differences), the transformed tiles meet the kernels in
16 batched dots, and 2x2 output tiles come back by a last transform (Lavin and Gray, "Fast
Algorithms for Convolutional Neural Networks", 2015). The result equals the direct
convolution up to float rounding (about 1e-6 relative in float32). Measured per VGG16 layer in
benchmarks/RESULTS.md ("Winograd"): faster where the dots dominate the transforms (wide layers
on maps of 28 px or more), slower elsewhere; `pays_off` says which.
"""
import jax.numpy as jnp
import numpy as np

# F(2x2, 3x3): input transform B^T, kernel transform G, output transform A^T.
_B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
_A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])
_TILE, _OUT = _B_T.shape[0], _A_T.shape[0]  # 4x4 input tiles give 2x2 output tiles.


def pays_off(height, width, in_channels, features):
  """Whether F(2x2, 3x3) beats XLA:CPU's direct convolution for this layer (measured)."""
  return min(height, width) >= 28 and in_channels >= 64 and features >= 128


def _combine(matrix, terms):
  """matrix @ terms for a matrix of 0 and +-1 (B^T, A^T), terms a list of arrays: sums and
  differences, which XLA fuses into one pass."""
  rows = []
  for coefficients in matrix:
    row = None
    for coefficient, term in zip(coefficients, terms):
      if coefficient:
        term = term if coefficient == 1 else -term
        row = term if row is None else row + term
    rows.append(row)
  return rows


def conv3x3(inputs, kernel, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
            dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated`'s signature, for `nn.Conv(conv_general_dilated=...)`.

  Takes only what VGG16's convolutions are: NHWC inputs, a 3x3 HWIO kernel, stride 1, 'SAME'
  padding, no dilation, no groups.
  """
  del dimension_numbers, precision  # nn.Conv's NHWC/HWIO defaults; float32 as given.
  undilated = all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
  if (kernel.shape[:2] != (3, 3) or tuple(window_strides) != (1, 1) or padding != 'SAME'
      or not undilated or feature_group_count != 1):
    raise ValueError('winograd.conv3x3 computes 3x3 convolutions with stride 1, SAME padding, '
                     'no dilation and no groups only.')
  n, h, w, c = inputs.shape
  features = kernel.shape[-1]
  g = jnp.asarray(_G, kernel.dtype)
  kernels = jnp.einsum('ai,ijcf,bj->abcf', g, kernel, g).reshape(_TILE**2, c, features)

  rows, cols = -(-h // _OUT), -(-w // _OUT)  # Output tiles; odd sizes are padded, then cut.
  padded = jnp.pad(inputs, ((0, 0), (1, _OUT * rows + 1 - h), (1, _OUT * cols + 1 - w), (0, 0)))
  tile = [[padded[:, i:i + _OUT * rows:_OUT, j:j + _OUT * cols:_OUT] for j in range(_TILE)]
          for i in range(_TILE)]  # tile[i][j]: element (i, j) of every input tile.
  half = [_combine(_B_T, [tile[i][j] for i in range(_TILE)]) for j in range(_TILE)]
  tiles = [_combine(_B_T, [half[j][p] for j in range(_TILE)]) for p in range(_TILE)]
  tiles = jnp.stack([tiles[p][q] for p in range(_TILE) for q in range(_TILE)])

  products = jnp.einsum('tnhwc,tcf->tnhwf', tiles, kernels)
  products = products.reshape(_TILE, _TILE, n, rows, cols, features)
  half = [_combine(_A_T, [products[p, q] for q in range(_TILE)]) for p in range(_TILE)]
  out = [[_combine(_A_T, [half[p][s] for p in range(_TILE)])[r] for s in range(_OUT)]
         for r in range(_OUT)]  # out[r][s]: element (r, s) of every output tile.
  out = jnp.stack([jnp.stack(out[r], axis=3) for r in range(_OUT)], axis=2)
  return out.reshape(n, _OUT * rows, _OUT * cols, features)[:, :h, :w]
