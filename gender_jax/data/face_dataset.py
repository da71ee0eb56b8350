"""A TFDS dataset built from a folder of face images sorted into male/female sub-folders.

The folder is scanned, files not named as images (hidden ones, README.txt, Thumbs.db...) are skipped
and counted, every image is decoded once to check it (gender_jax/data/image_files.py), and the good
ones are written as ArrayRecord under `tfds_dir`, read back with `as_data_source` (no TensorFlow
needed). Each example keeps the file's bytes verbatim (lossless and about 10x smaller than decoded
pixels, which gender_jax/data/input_cache.py caches per image size), its label and its path relative
to the folder. The builder config is named after a fingerprint of the folder's file list, sizes and
mtimes, so a changed folder gets a fresh build and an unchanged one is reused; the folder is never
written to.
"""
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import re

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from gender_jax.data import image_files
from gender_jax import full_disk
from gender_jax import LABELS
from gender_jax import UserError

SPLITS = ('train', 'valid', 'test')
UNSPLIT = 'unsplit'  # The single TFDS split of a flat {male,female} folder.
# Folder names accepted, in any case, for each split and class. Kaggle's CelebA gender sets
# unpack to e.g. Dataset/{Train,Validation,Test}/{Male,Female}: one wrapper folder is looked into.
SPLIT_NAMES = {
    'train': ('train', 'training'),
    'valid': ('valid', 'validation', 'val'),
    'test': ('test', 'testing'),
}
CLASS_NAMES = {
    'female': ('female', 'females', 'woman', 'women'),
    'male': ('male', 'males', 'man', 'men'),
}
REPORT_NAME = 'bad_files.txt'
# Extensions (any case) of the files looked at; everything else in a class folder is skipped.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')
# Bad files that say nothing of the images' data (listed, but not counted toward
# max_bad_fraction, which guards against a damaged or misnamed folder of images).
LINK_LOOP, BROKEN_LINK, NOT_UTF8 = ('symbolic link loop', 'broken symbolic link',
                                    'file name is not valid UTF-8')
NOT_IMAGE_DATA = (LINK_LOOP, BROKEN_LINK, NOT_UTF8)
SKIPPED_SHOWN = 10  # Skipped names kept in the dataset's metadata; all of them are counted.

# Every config of this builder is made per folder, so tfds' "Using custom data configuration"
# warning on each load says nothing.
logging.getLogger('absl').addFilter(
    lambda record: not record.getMessage().startswith('Using custom data configuration'))


class FolderError(UserError, ValueError):
  """The face folder cannot be used as it is; the message says why and what to change."""


@dataclasses.dataclass(frozen=True)
class FolderScan:
  """The labelled files of a face folder, sorted by path, and their fingerprint."""
  root: str  # Absolute path of the folder (after descending into a single wrapper folder).
  layout: str  # 'splits' ({train,valid,test}/{male,female}) or 'flat' ({male,female}).
  split_dirs: dict  # split -> its folder's name as found ('' for a flat folder).
  examples: dict  # split (or UNSPLIT) -> list of (relative path, label), sorted by path.
  fingerprint: str  # sha256 of the relative paths, sizes and mtimes of every file.
  skipped: list  # Relative paths not named as images (a folder's ends with '/'), sorted.
  num_bytes: int  # Of the image files: about what the dataset's records take on disk.


def _accepted(names):
  return ', '.join(f'{k} ({"/".join(v)})' for k, v in names.items())


def _is_dir(entry):
  try:
    return entry.is_dir()
  except OSError:  # A symbolic link loop: no folder to look into.
    return False


def _few(names, shown=5):
  more = len(names) - shown
  return ', '.join(names[:shown]) + (f' and {more} more' if more > 0 else '')


def _match(root, names, what):
  """Maps the sub-folders of `root` onto the keys of `names`; unknown or doubled names fail."""
  found = sorted(e.name for e in os.scandir(root) if _is_dir(e) and not e.name.startswith('.'))
  lookup = {alias: key for key, aliases in names.items() for alias in aliases}
  matched, unknown = {}, []
  for name in found:
    key = lookup.get(name.lower())
    if key is None:
      unknown.append(name)
    elif key in matched:
      raise FolderError(f'{root} has two {what} folders for {key!r}: {matched[key]!r} and '
                        f'{name!r}. Keep one.')
    else:
      matched[key] = name
  return found, matched, unknown


def _walk(root, rel, skipped, parents):
  """Yields (relative path, size, mtime) of the image files under root/rel.

  Hidden entries and files without an image extension are appended to `skipped` instead. A link
  to a folder enclosing one of `parents` (real paths of the folders walked) is yielded as a file,
  which read_file reports as a loop; broken links and link loops are yielded with size -1.
  """
  for entry in os.scandir(os.path.join(root, rel)):
    entry_rel, is_dir = os.path.join(rel, entry.name), _is_dir(entry)
    real = os.path.realpath(entry.path) if is_dir else None
    if entry.name.startswith('.') or not (is_dir or entry.name.lower().endswith(IMAGE_EXTENSIONS)):
      skipped.append(entry_rel + ('/' if is_dir else ''))
    elif is_dir and not any(os.path.commonpath([real, p]) == real for p in parents):
      yield from _walk(root, entry_rel, skipped, parents + (real,))
    else:
      try:
        stat = entry.stat()
        yield entry_rel, stat.st_size, stat.st_mtime_ns
      except OSError:
        yield entry_rel, -1, 0


def _class_files(root, split_rel, skipped):
  """Lists (relative path, label, size, mtime) of the images under root/split_rel/{male,female}.

  Appends the paths of the files skipped there to `skipped`.
  """
  split_path = os.path.join(root, split_rel)
  found, classes, unknown = _match(split_path, CLASS_NAMES, 'class')
  if unknown or len(classes) < len(CLASS_NAMES):
    missing = [c for c in CLASS_NAMES if c not in classes]
    raise FolderError(
        f'{split_path} must hold one folder per class; found {found or "no folders"}'
        + (f', unknown {unknown}' if unknown else '') + (f', missing {missing}' if missing else '')
        + f'. Accepted class folder names (any case): {_accepted(CLASS_NAMES)}.')
  files = []
  for label, cls in enumerate(LABELS):
    class_rel = os.path.join(split_rel, classes[cls])
    class_path, class_skipped = os.path.join(root, class_rel), []
    class_files = [(rel, label, size, mtime) for rel, size, mtime in
                   _walk(root, class_rel, class_skipped, (os.path.realpath(class_path),))]
    if not class_files:
      raise FolderError(
          f'Class folder {class_path} ' + (
              f'holds no image files ({"/".join(IMAGE_EXTENSIONS)}), only {_few(class_skipped)}'
              if class_skipped else 'is empty') + ': every split needs images of both classes.')
    files += class_files
    skipped += class_skipped
  return files


def scan_folder(path):
  """Finds the layout and labelled files of a face folder; fails naming what it found."""
  root = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(root):
    raise FolderError(
        f'Face folder {path!r} ({root}) does not exist. Point config.data_dir (--config.data_dir, '
        f'or the GENDER_JAX_DATA variable) at a folder laid out as '
        f'{{train,valid,test}}/{{male,female}}/*.jpg or {{male,female}}/*.jpg.')
  while True:
    found, splits, unknown_splits = _match(root, SPLIT_NAMES, 'split')
    _, classes, unknown_classes = _match(root, CLASS_NAMES, 'class')
    if splits and not unknown_splits:
      layout = 'splits'
      break
    if classes and not unknown_classes:
      layout, splits = 'flat', {UNSPLIT: ''}
      break
    if len(found) == 1:  # A single wrapper folder, as archives often unpack to: look inside.
      root = os.path.join(root, found[0])
      continue
    raise FolderError(
        f'{root} is not a face folder: found sub-folders {found or "none"}. Expected split '
        f'folders {_accepted(SPLIT_NAMES)}, each with class folders, or class folders '
        f'{_accepted(CLASS_NAMES)} directly (any case).')
  examples, skipped, digest, num_bytes = {}, [], hashlib.sha256(layout.encode()), 0
  for split, split_rel in sorted(splits.items(), key=lambda kv: (*SPLITS, UNSPLIT).index(kv[0])):
    files = sorted(_class_files(root, split_rel, skipped))
    examples[split] = [(rel, label) for rel, label, _, _ in files]
    for rel, _, size, mtime in files:
      digest.update(os.fsencode(f'{rel}\0{size}\0{mtime}\n'))
      num_bytes += max(size, 0)
  skipped.sort()
  for rel in skipped:  # Names only, as the metadata lists: rewriting a .DS_Store needs no rebuild.
    digest.update(os.fsencode(f'{rel}\0skipped\n'))
  return FolderScan(root, layout, splits, examples, digest.hexdigest(), skipped, num_bytes)


@dataclasses.dataclass
class FaceFolderConfig(tfds.core.BuilderConfig):
  """One face folder; the name carries its fingerprint, so each version of it builds apart."""
  source_dir: str = ''
  fingerprint: str = ''
  max_bad_fraction: float = 0.01


class FaceFolder(tfds.core.GeneratorBasedBuilder):
  """Face images of a local folder: encoded bytes, label (0 female, 1 male), relative path."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Encoded file bytes, label and path of every decodable image.'}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'Face images of {self.builder_config.source_dir}.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(), dtype=np.object_),  # The file's bytes.
            'label': tfds.features.ClassLabel(names=LABELS),
            'path': tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # Records stay in path order, as the protocol reads them.
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the folder is local.
    config = self.builder_config
    scan = scan_folder(config.source_dir)
    if scan.fingerprint != config.fingerprint:
      raise FolderError(f'{scan.root} changed while its dataset was being built; run again.')
    bad, good = [], {}
    for split, examples in scan.examples.items():
      good[split] = []
      for rel, label in tqdm.tqdm(examples, desc=f'Checking {split} images', unit=' img'):
        if not image_files.is_utf8(rel):  # The dataset stores paths as UTF-8 text.
          bad.append((image_files.printable(rel), f'{NOT_UTF8}: rename the file'))
          continue
        try:
          image_files.decode_rgb(read_file(scan.root, rel))
          good[split].append((rel, label))
        except image_files.BadImageError as e:
          bad.append((rel, str(e)))
    metadata = {
        'source_dir': scan.root,
        'layout': scan.layout,
        'split_dirs': scan.split_dirs,
        'num_files': {split: _class_counts(v) for split, v in scan.examples.items()},
        'num_examples': {split: _class_counts(v) for split, v in good.items()},
        'bad_files': bad,
        'num_skipped': len(scan.skipped),  # Not named as images: neither examples nor bad.
        'skipped_files': [image_files.printable(p) for p in scan.skipped[:SKIPPED_SHOWN]],
    }
    self.info.metadata.update(metadata)
    check_bad_files(metadata, report_path(self), config.max_bad_fraction)
    return {split: self._generate_examples(scan.root, v) for split, v in good.items()}

  def _generate_examples(self, root, examples):
    for rel, label in examples:
      yield rel, {'image': read_file(root, rel), 'label': label, 'path': rel}


def read_file(root, rel):
  """The bytes of root/rel; an unreadable file is a BadImageError like an undecodable one."""
  path = os.path.join(root, rel)
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    if os.path.islink(path):
      target = os.readlink(path)
      if e.errno == errno.ELOOP or os.path.isdir(path):  # isdir: a link to an enclosing folder.
        raise image_files.BadImageError(f'{LINK_LOOP} (links to {target})') from e
      if not os.path.exists(path):
        raise image_files.BadImageError(f'{BROKEN_LINK} to {target}') from e
    raise image_files.BadImageError(f'unreadable ({e.strerror or e})') from e


def _class_counts(examples):
  return [sum(label == i for _, label in examples) for i in range(len(LABELS))]


def report_path(builder):
  """The bad-file report: beside the version folder, so it is there even when a build fails."""
  return os.path.join(os.fspath(builder.data_path.parent), REPORT_NAME)


def _write_report(metadata, path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(f'# Files of {metadata["source_dir"]} left out because they could not be decoded: '
            f'{len(metadata["bad_files"])}.\n')
    if metadata.get('num_skipped'):
      f.write(f'# Skipped as not named as images (not bad files): {metadata["num_skipped"]}, '
              f'such as {", ".join(metadata["skipped_files"])}.\n')
    f.write('# relative path\treason\n')
    f.writelines(f'{rel}\t{reason}\n' for rel, reason in metadata['bad_files'])


def check_bad_files(metadata, report, max_bad_fraction):
  """Writes the bad-file report; fails if too many files are bad or a class has no images."""
  _write_report(metadata, report)
  total = sum(sum(c) for c in metadata['num_files'].values())
  num_bad = sum(not reason.startswith(NOT_IMAGE_DATA) for _, reason in metadata['bad_files'])
  if num_bad > max_bad_fraction * total:
    raise FolderError(
        f'{num_bad} of {total} files in {metadata["source_dir"]} could not be decoded, more than '
        f'max_bad_fraction={max_bad_fraction}; see {report} for each file and why.')
  for split, counts in metadata['num_examples'].items():
    for name, count in zip(LABELS, counts):
      if not count:
        raise FolderError(f'No decodable {name} images in the {split} split of '
                          f'{metadata["source_dir"]}; see {report}.')


def _config_name(scan):
  stem = re.sub(r'[^a-z0-9]+', '_', os.path.basename(scan.root).lower()).strip('_') or 'faces'
  return f'{stem}_{scan.fingerprint[:16]}'


@contextlib.contextmanager
def locked(path):
  """Holds an exclusive lock on `path`, so processes sharing a tfds_dir take turns."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    yield


def build(source_dir, tfds_dir, max_bad_fraction=0.01):
  """Builds the folder's dataset under tfds_dir, or reuses it if the folder is unchanged.

  Returns the builder, ready for `as_data_source`; fails with FolderError on bad input.
  """
  scan = scan_folder(source_dir)
  config = FaceFolderConfig(name=_config_name(scan), source_dir=scan.root,
                            fingerprint=scan.fingerprint, max_bad_fraction=max_bad_fraction,
                            description=f'Face images of {scan.root}.')
  tfds_dir = os.path.expanduser(tfds_dir)
  with locked(os.path.join(tfds_dir, FaceFolder.name, f'{config.name}.lock')):
    builder = FaceFolder(config=config, data_dir=tfds_dir)
    if builder.is_prepared():
      # Checked again on reuse, since the threshold may have changed since the build.
      with full_disk.writing(report_path(builder), full_disk.DATASET_FIX):
        check_bad_files(dict(builder.info.metadata), report_path(builder), max_bad_fraction)
    else:  # A build cut short by a full disk leaves nothing: TFDS removes its partial folder.
      with full_disk.writing(os.fspath(builder.data_path), full_disk.DATASET_FIX, scan.num_bytes):
        builder.download_and_prepare(file_format='array_record')
        for split in builder.info.splits:  # Part of the build, so loads never parse every record.
          read_index(builder, split)
  return builder


def read_index(builder, split):
  """Returns (relative paths, labels int32) of a built split's records, in record order.

  Read from the records once, then from a small JSON file beside them.
  """
  path = os.path.join(os.fspath(builder.data_dir), f'index-{split}.json')
  if os.path.exists(path):
    with open(path) as f:
      paths, labels = json.load(f)
  else:
    records = builder.as_data_source(split)
    examples = records.__getitems__(list(range(len(records))))
    paths = [e['path'].decode() for e in examples]
    labels = [int(e['label']) for e in examples]
    with full_disk.writing(path, full_disk.DATASET_FIX), full_disk.replacing(path) as tmp, \
        open(tmp, 'w') as f:
      json.dump([paths, labels], f)
  return paths, np.asarray(labels, np.int32)
