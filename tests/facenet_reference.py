"""facenet-pytorch's MTCNN: the reference gender_jax.faces.detect is tested and timed against.

PyPI has torchvision only as CUDA builds. Next to a CPU torch (what .ci/run installs) their C++
ops do not load, and `import torchvision` then fails registering `torchvision::nms`.
facenet-pytorch needs that one op (through batched_nms), so where the ops are missing it is
defined here before torchvision is imported: torchvision's CPU kernel
(torchvision/csrc/ops/cpu/nms_kernel.cpp) transcribed, with the same float32 arithmetic, stable
descending sort and `iou > threshold` in double. Where torchvision's own ops load, nothing is
replaced. `nms_seconds` counts the time spent in the transcription, so a benchmark can leave it
out (the C++ kernel would be faster).
"""
import importlib.util
import pathlib
import time

import numpy as np

_library = None  # The torch.library.Library defining torchvision::nms, kept alive here.
nms_seconds = [0.0]


def _nms_cpu(dets, scores, iou_threshold):
  """torchvision's nms_kernel_impl: indices kept, by descending score."""
  import torch  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  if dets.numel() == 0:
    return torch.empty((0,), dtype=torch.long)
  d = dets.detach().cpu().numpy()
  x1, y1, x2, y2 = (np.ascontiguousarray(d[:, i]) for i in range(4))
  areas = (x2 - x1) * (y2 - y1)
  order = scores.sort(stable=True, dim=0, descending=True)[1].numpy()
  suppressed = np.zeros(len(d), bool)
  keep = []
  for position, i in enumerate(order):
    if suppressed[i]:
      continue
    keep.append(i)
    later = order[position + 1:]
    w = np.maximum(np.float32(0), np.minimum(x2[i], x2[later]) - np.maximum(x1[i], x1[later]))
    h = np.maximum(np.float32(0), np.minimum(y2[i], y2[later]) - np.maximum(y1[i], y1[later]))
    inter = w * h
    ovr = inter / (areas[i] + areas[later] - inter)
    suppressed[later[ovr.astype(np.float64) > iou_threshold]] = True
  nms_seconds[0] += time.perf_counter() - start
  return torch.as_tensor(np.array(keep, np.int64))


def _torchvision_ops_load():
  """Whether torchvision's C++ ops load beside this torch (they are loaded if so)."""
  import torch  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec('torchvision')
  if spec is None or not spec.submodule_search_locations:
    return True  # No torchvision: importing facenet_pytorch fails and says so.
  library = next(pathlib.Path(spec.submodule_search_locations[0]).glob('_C.*'), None)
  try:
    torch.ops.load_library(str(library))
    return True
  except (OSError, ImportError, RuntimeError, TypeError):
    return False


def import_mtcnn():
  """facenet_pytorch.MTCNN, with torchvision::nms defined first where torchvision lacks it."""
  global _library
  import sys  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  if 'torchvision' not in sys.modules and _library is None and not _torchvision_ops_load():
    _library = torch.library.Library('torchvision', 'DEF')  # pylint: disable=unused-variable
    _library.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    # torchvision registers a fake kernel for qnms too; defining it lets that succeed.
    _library.define('qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    _library.impl('nms', _nms_cpu, 'CPU')
    import torchvision.extension  # pylint: disable=g-import-not-at-top
    torchvision.extension._has_ops = lambda: True  # pylint: disable=protected-access
  from facenet_pytorch import MTCNN  # pylint: disable=g-import-not-at-top
  return MTCNN


def transcribed_nms():
  """Whether torchvision::nms is this module's transcription (torchvision's ops did not load)."""
  return _library is not None
