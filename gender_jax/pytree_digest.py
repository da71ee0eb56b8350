"""A digest of a pytree's values: what a checkpoint must give back, and what cached features of a
base depend on."""
import hashlib
import json

import jax
import numpy as np


def host_array(leaf):
  """A leaf as numpy: a replicated global array is not fully addressable on several hosts, so its
  local copy."""
  return np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)


def digest(tree, **settings):
  """sha256 (hex) of `settings` (JSON), then of each leaf's path and bytes."""
  hashed = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    hashed.update(jax.tree_util.keystr(path).encode())
    hashed.update(np.ascontiguousarray(host_array(leaf)).tobytes())
  return hashed.hexdigest()
