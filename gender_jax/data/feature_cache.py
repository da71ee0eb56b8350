"""Features of a frozen base, computed once per image and shared by every run that can use them.

A run on a frozen pretrained base trains only its head, on the base's features of each image
(and of its mirror image, so flip augmentation stays exact). The features are kept beside the
dataset's decoded images, one row per dataset record (gender_jax/data/record_files.py), filled in as
runs ask for them: every size and seed of a study, and any later run of the same base on the same
inputs, reads them instead of running the base again.
"""
import contextlib

import jax
from jax.experimental import multihost_utils
import numpy as np

from gender_jax import full_disk
from gender_jax import pytree_digest
from gender_jax.data import face_dataset
from gender_jax.data import record_files


def fingerprint(base_variables, **settings):
  """What features depend on besides the images: the base's values, and settings of how it runs."""
  return pytree_digest.digest(base_variables, **settings)[:16]


def cached_features(splits, key, flip_train, encode):
  """{name: features} of each split, plus 'train_flip' (the mirrored training images) if asked.

  encode(split, flip) -> float32 (N, ...) runs the base over a split's examples; it sees only the
  examples no earlier run encoded with this key. Splits not drawn from a dataset (no records)
  are encoded in memory.
  """
  jobs = [(name, name, False) for name in splits]
  if flip_train:
    jobs.append(('train_flip', 'train', True))
  return {name: _features(splits[source], f'{key}-flip' if flip else key,
                          lambda split, flip=flip: encode(split, flip))
          for name, source, flip in jobs}


def _features(split, key, encode):
  """Rows of split's records from the cache named key, encoding the records it lacks."""
  records = split.records
  if records is None:
    return encode(split)
  base = f'{records.cache}.features-{key}'
  lead = jax.process_index() == 0  # Decides what to encode and writes; every process encodes.
  with face_dataset.locked(base + '.lock') if lead else contextlib.nullcontext():
    cache = record_files.CheckedRows(base, records.count) if lead else None
    filled = cache.filled(records.rows) if lead else np.zeros(len(records.rows), bool)
    if jax.process_count() > 1:
      filled = np.asarray(multihost_utils.broadcast_one_to_all(filled))
    todo = np.flatnonzero(~filled)
    if len(todo):
      features = encode(split.take(todo))
      if lead:
        written = features.size * 4  # Bytes as float32, whatever the base computed in.
        with full_disk.writing(base + '.npy', full_disk.DATASET_FIX, written):
          cache[records.rows[todo]] = features.astype(np.float32)
          cache.commit()
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'features {base}')
  return record_files.Rows(record_files.RecordArray(base + '.npy'), records.rows)


def feature_batch(batch, features):
  """Swaps a train batch's images for the cached features of the same (maybe flipped) faces."""
  index = batch['index']
  picked = features['train'][index]
  if 'train_flip' in features:
    picked = np.where(batch['flip'][:, None, None, None], features['train_flip'][index], picked)
  return {'features': picked, 'label': batch['label']}
