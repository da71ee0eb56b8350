"""The face dataset and input pipeline, on tiny generated folders (and the real faces if present)."""
import importlib.util
import io
import os
import subprocess
import sys

import ml_collections
import numpy as np
from PIL import Image
import pytest

from gender_jax.data import augment
from gender_jax.data import batching
from gender_jax.data import face_dataset
from gender_jax.data import image_files
from gender_jax.data import input_cache
from gender_jax.data import protocol
from gender_jax.data import record_files
from gender_jax.faces import align
from gender_jax.faces import inputs

# (female, male) images per split of the small folder most tests use.
COUNTS = {'train': (12, 8), 'valid': (5, 5), 'test': (6, 4)}


def _image(seed, size=(20, 24)):
  """A random RGB image, different for every seed, so images can be told apart after loading."""
  return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8))


def _jpeg_bytes(seed):
  buffer = io.BytesIO()
  _image(seed).save(buffer, 'JPEG', quality=95)
  return buffer.getvalue()


def make_folder(root, counts=None, names=None, flat=False):
  """Writes a face folder of tiny JPEGs: {split}/{class}/NNN.jpg, or {class}/NNN.jpg if flat."""
  counts = counts or COUNTS
  names = names or {}
  seed = 0
  for split, per_class in counts.items():
    for cls, count in zip(('female', 'male'), per_class):
      folder = root / names.get(cls, cls) if flat else root / names.get(split, split) / names.get(cls, cls)
      folder.mkdir(parents=True, exist_ok=True)
      for _ in range(count):
        seed += 1
        (folder / f'{seed:03d}.jpg').write_bytes(_jpeg_bytes(seed))
  return root


def make_config(data_dir, tfds_dir, **overrides):
  config = ml_collections.ConfigDict(dict(
      data_dir=str(data_dir), tfds_dir=str(tfds_dir), num_train=-1, num_valid=-1, num_test=-1,
      seed=0, image_size=16, resize='stretch', max_bad_fraction=0.01, face_align='none',
      face_template=(), face_zoom=1.0, face_missing='resize', face_detector_weights=''))
  config.update(overrides)
  return config


def face_input_of(data_dir, tfds_dir, **overrides):
  return inputs.FaceInput.from_config(make_config(data_dir, tfds_dir, **overrides))


@pytest.fixture
def folder(tmp_path):
  return make_folder(tmp_path / 'faces')


@pytest.fixture
def splits(folder, tmp_path):
  return protocol.load_splits(make_config(folder, tmp_path / 'tfds')).splits


def _snapshot(root):
  return {p: (os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in sorted(root.rglob('*'))}


# --- Folder layouts -----------------------------------------------------------------------------


def test_needs_no_tensorflow(splits):
  assert importlib.util.find_spec('tensorflow') is None
  assert 'tensorflow' not in sys.modules


def test_counts_labels_and_paths(splits, folder):
  for split, (female, male) in COUNTS.items():
    s = splits[split]
    assert len(s) == female + male
    assert s.images.shape == (female + male, 16, 16, 3) and s.images.dtype == np.uint8
    assert s.labels.dtype == np.int32
    assert list(s.labels) == [int(p.split('/')[1] == 'male') for p in s.paths]
    assert s.paths == sorted(s.paths) and all(p.startswith(f'{split}/') for p in s.paths)
    assert s.source_dir == str(folder)


def test_images_stay_on_disk_until_a_batch_asks_for_them(splits):
  images = splits['train'].images
  assert isinstance(images.array, record_files.RecordArray)  # The cache on disk, not a copy.
  batch = images[np.array([3, 0, 2])]
  assert isinstance(batch, np.ndarray)
  np.testing.assert_array_equal(batch[1], np.asarray(images)[0])


def test_images_are_the_files_resized(splits, folder):
  path = splits['valid'].paths[3]
  expected = np.asarray(Image.open(folder / path).convert('RGB').resize((16, 16), Image.BILINEAR))
  np.testing.assert_array_equal(splits['valid'].images[3], expected)


def test_folder_name_aliases(tmp_path):
  names = {'train': 'Training', 'valid': 'Validation', 'test': 'Testing',
           'female': 'Women', 'male': 'MEN'}
  folder = make_folder(tmp_path / 'kaggle' / 'Dataset', names=names)  # Wrapper folder too.
  scan = face_dataset.scan_folder(tmp_path / 'kaggle')
  assert scan.layout == 'splits'
  assert scan.root == str(folder)
  assert scan.split_dirs == {'train': 'Training', 'valid': 'Validation', 'test': 'Testing'}
  for split, (female, male) in COUNTS.items():
    labels = [label for _, label in scan.examples[split]]
    assert labels.count(0) == female and labels.count(1) == male


def test_flat_folder_is_split_by_seed(tmp_path):
  folder = make_folder(tmp_path / 'flat', counts={'all': (30, 20)}, flat=True)
  loaded = protocol.load_splits(make_config(folder, tmp_path / 'tfds')).splits
  sizes = {s: (sum(loaded[s].labels == 0), sum(loaded[s].labels == 1)) for s in loaded}
  assert sizes == {'train': (24, 16), 'valid': (3, 2), 'test': (3, 2)}  # 80/10/10 per class.
  everything = sum((loaded[s].paths for s in loaded), [])
  assert sorted(everything) == sorted(str(p.relative_to(folder)) for p in folder.rglob('*.jpg'))
  other = protocol.load_splits(make_config(folder, tmp_path / 'tfds', seed=1)).splits
  assert other['test'].paths != loaded['test'].paths


def test_missing_folder_names_it(tmp_path):
  with pytest.raises(face_dataset.FolderError, match='nowhere.*does not exist.*data_dir'):
    protocol.load_splits(make_config(tmp_path / 'nowhere', tmp_path / 'tfds')).splits


def test_unknown_folder_names_list_found_and_accepted(tmp_path):
  (tmp_path / 'faces' / 'cats').mkdir(parents=True)
  (tmp_path / 'faces' / 'dogs').mkdir()
  with pytest.raises(face_dataset.FolderError, match=r"\['cats', 'dogs'\].*training.*female"):
    face_dataset.scan_folder(tmp_path / 'faces')


def test_unknown_class_folder_is_an_error(folder):
  (folder / 'train' / 'child').mkdir()
  with pytest.raises(face_dataset.FolderError, match=r"unknown \['child'\]"):
    face_dataset.scan_folder(folder)


def test_empty_class_folder_is_an_error(folder):
  for f in (folder / 'valid' / 'male').iterdir():
    f.unlink()
  with pytest.raises(face_dataset.FolderError, match='valid/male is empty'):
    face_dataset.scan_folder(folder)


def test_missing_split_folder_is_an_error(tmp_path):
  folder = make_folder(tmp_path / 'faces', counts={'train': (3, 3), 'valid': (2, 2)})
  with pytest.raises(face_dataset.FolderError, match='no test split folder.*testing'):
    protocol.load_splits(make_config(folder, tmp_path / 'tfds')).splits
  loaded = protocol.load_splits(make_config(folder, tmp_path / 'tfds'), splits=('train',)).splits
  assert len(loaded['train']) == 6


# --- Bad files ----------------------------------------------------------------------------------


def _save(image, path, fmt):
  buffer = io.BytesIO()
  image.save(buffer, fmt)
  path.write_bytes(buffer.getvalue())


def test_bad_files_are_reported_and_left_out(folder, tmp_path):
  male = folder / 'train' / 'male'
  jpeg = _jpeg_bytes(1000)
  (male / 'truncated.jpg').write_bytes(jpeg[:len(jpeg) // 2])
  (male / 'corrupt.jpg').write_bytes(jpeg[:200] + bytes(range(256)) * 4)
  (male / 'empty.jpg').write_bytes(b'')
  (male / 'text.jpg').write_text('not a picture\n')
  config = make_config(folder, tmp_path / 'tfds', max_bad_fraction=0.2)
  loaded = protocol.load_splits(config).splits
  assert len(loaded['train']) == sum(COUNTS['train'])
  builder = face_dataset.build(config.data_dir, config.tfds_dir, config.max_bad_fraction)
  with open(face_dataset.report_path(builder)) as f:
    report = dict(line.rstrip('\n').split('\t') for line in f if not line.startswith('#'))
  assert set(report) == {f'train/male/{n}.jpg' for n in ('truncated', 'corrupt', 'empty', 'text')}
  assert report['train/male/empty.jpg'] == 'empty file (0 bytes)'
  assert report['train/male/truncated.jpg'] == 'truncated JPEG (decodes partly)'
  assert report['train/male/text.jpg'] == 'a text file, not an image'
  assert report['train/male/corrupt.jpg'].startswith('damaged JPEG (Pillow: ')  # Its words vary.


def _truncated(fmt):
  buffer = io.BytesIO()
  _image(7).save(buffer, fmt)
  return buffer.getvalue()[:len(buffer.getvalue()) // 2]


@pytest.mark.parametrize('data, reason', [
    (b'not a picture\n', 'a text file, not an image'),
    (_truncated('JPEG'), 'truncated JPEG (decodes partly)'),
    (_truncated('PNG'), 'truncated PNG (decodes partly)'),
    (b'%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n',
     'not an image Pillow can read (starts with bytes 25 50 44 46: a PDF?)'),
    (b'PK\x03\x04\x14\x00\x00\x00', 'not an image Pillow can read (starts with bytes 50 4b 03 04: '
                                    'a ZIP archive?)'),
    (bytes(range(256)), 'not an image Pillow can read (starts with bytes 00 01 02 03)'),
    (_truncated('PNG')[:12], 'damaged PNG (starts like one, but Pillow cannot open it)'),
], ids=['text', 'truncated_jpeg', 'truncated_png', 'pdf', 'zip', 'unknown', 'damaged_header'])
def test_bad_file_reasons_are_words(data, reason):
  with pytest.raises(image_files.BadImageError) as e:
    image_files.decode_rgb(data)
  assert str(e.value) == reason


def test_non_image_names_are_skipped_not_bad(folder, tmp_path):
  male = folder / 'train' / 'male'
  for name in ('README.txt', '.DS_Store', 'Thumbs.db', 'notes.md', 'desktop.ini', '.hidden.jpg'):
    (male / name).write_text('not a picture\n')
  (male / '.ipynb_checkpoints').mkdir()
  (male / '.ipynb_checkpoints' / 'copy.jpg').write_bytes(_jpeg_bytes(998))
  (male / 'UPPER.JPEG').write_bytes(_jpeg_bytes(999))  # Extensions in any case are images.
  skipped = ['train/male/.DS_Store', 'train/male/.hidden.jpg', 'train/male/.ipynb_checkpoints/',
             'train/male/README.txt', 'train/male/Thumbs.db', 'train/male/desktop.ini',
             'train/male/notes.md']
  assert face_dataset.scan_folder(folder).skipped == skipped
  config = make_config(folder, tmp_path / 'tfds')  # max_bad_fraction=0.01: no bad file allowed.
  loaded = protocol.load_splits(config).splits
  assert 'train/male/UPPER.JPEG' in loaded['train'].paths
  assert len(loaded['train']) == sum(COUNTS['train']) + 1
  builder = face_dataset.build(config.data_dir, config.tfds_dir)
  meta = builder.info.metadata
  assert meta['bad_files'] == [] and meta['num_files']['train'] == [12, 9]
  assert meta['num_skipped'] == 7 and meta['skipped_files'] == skipped
  with open(face_dataset.report_path(builder)) as f:
    assert 'not named as images (not bad files): 7, such as train/male/.DS_Store' in f.read()


def test_class_folder_of_non_images_names_them(folder):
  for f in (folder / 'valid' / 'male').iterdir():
    f.unlink()
  (folder / 'valid' / 'male' / 'README.txt').write_text('faces go here\n')
  with pytest.raises(face_dataset.FolderError, match='valid/male holds no image files.*only '
                                                     r'valid/male/README\.txt'):
    face_dataset.scan_folder(folder)


def test_broken_and_looping_symlinks_are_bad_files(folder, tmp_path):
  male = folder / 'train' / 'male'
  os.symlink('missing.jpg', male / 'dangling.jpg')
  os.symlink('loop.jpg', male / 'loop.jpg')
  os.symlink('..', male / 'up')  # Followed, it would list the female images as male ones.
  os.symlink('.loop', male / '.loop')  # Hidden: skipped by its name, never followed.
  reasons = {'train/male/dangling.jpg': 'broken symbolic link to missing.jpg',
             'train/male/loop.jpg': 'symbolic link loop (links to loop.jpg)',
             'train/male/up': 'symbolic link loop (links to ..)'}
  config = make_config(folder, tmp_path / 'tfds', max_bad_fraction=0.2)
  assert len(protocol.load_splits(config).splits['train']) == sum(COUNTS['train'])
  builder = face_dataset.build(config.data_dir, config.tfds_dir, config.max_bad_fraction)
  assert dict(builder.info.metadata['bad_files']) == reasons
  assert builder.info.metadata['skipped_files'] == ['train/male/.loop']
  loaded = protocol.load_folder(folder / 'train', face_input_of(folder, None),
                                      max_bad_fraction=0.2)
  assert dict(loaded.bad_files) == {k.removeprefix('train/'): v for k, v in reasons.items()}


def test_too_many_bad_files_fail_naming_the_report(folder, tmp_path):
  (folder / 'test' / 'female' / 'empty.jpg').write_bytes(b'')
  with pytest.raises(face_dataset.FolderError, match=r'1 of 41 files.*bad_files\.txt'):
    protocol.load_splits(make_config(folder, tmp_path / 'tfds')).splits


def test_class_with_only_bad_files_fails(folder, tmp_path):
  for f in (folder / 'valid' / 'male').iterdir():
    f.write_bytes(b'')
  with pytest.raises(face_dataset.FolderError, match='No decodable male images in the valid'):
    protocol.load_splits(make_config(folder, tmp_path / 'tfds', max_bad_fraction=0.5)).splits


def test_convertible_images_become_rgb(folder, tmp_path):
  female = folder / 'train' / 'female'
  _save(_image(1).convert('L'), female / 'grey.png', 'PNG')
  transparent = _image(2).convert('RGBA')
  transparent.putalpha(0)
  _save(transparent, female / 'rgba.png', 'PNG')
  _save(_image(3).convert('CMYK'), female / 'cmyk.jpg', 'JPEG')
  sixteen = np.full((24, 20), 65535, np.uint16)
  sixteen[:12] = 32768
  _save(Image.fromarray(sixteen), female / 'grey16.png', 'PNG')
  loaded = protocol.load_splits(make_config(folder, tmp_path / 'tfds', image_size=20)).splits
  train = loaded['train']
  assert len(train) == sum(COUNTS['train']) + 4
  grey16 = train.images[train.paths.index('train/female/grey16.png')]
  assert grey16[0, 0].tolist() == [128] * 3 and grey16[-1, 0].tolist() == [255] * 3
  grey = train.images[train.paths.index('train/female/grey.png')]
  assert (grey[..., 0] == grey[..., 2]).all()
  assert (train.images[train.paths.index('train/female/rgba.png')] == 255).all()  # Over white.


def test_load_folder_reports_bad_files(folder):
  (folder / 'valid' / 'male' / 'empty.jpg').write_bytes(b'')
  loaded = protocol.load_folder(folder / 'valid', face_input_of(folder, None, image_size=16),
                                     max_bad_fraction=0.2)
  assert len(loaded) == sum(COUNTS['valid'])
  assert loaded.bad_files == [('male/empty.jpg', 'empty file (0 bytes)')]
  assert loaded.paths == sorted(loaded.paths)
  assert list(loaded.labels) == [int(p.startswith('male/')) for p in loaded.paths]
  with pytest.raises(face_dataset.FolderError, match='1 of 11 files'):
    protocol.load_folder(folder / 'valid', face_input_of(folder, None, image_size=16))


def test_load_folder_reads_every_split(folder):
  loaded = protocol.load_folder(
      folder, face_input_of(folder, None, image_size=8, resize='center_crop'))
  assert len(loaded) == sum(sum(c) for c in COUNTS.values())
  assert loaded.images.shape[1:] == (8, 8, 3)


def test_command_line_prints_the_table_and_writes_the_lists(tmp_path):
  folder = make_folder(tmp_path / 'flat', counts={'all': (30, 20)}, flat=True)
  result = subprocess.run(
      [sys.executable, '-m', 'gender_jax.data', '--config=configs/default.py',
       f'--config.data_dir={folder}', f'--config.tfds_dir={tmp_path / "tfds"}',
       f'--workdir={tmp_path / "work"}', '--config.num_train=20', '--config.num_valid=-1',
       '--config.num_test=-1', '--config.image_size=16'],
      cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True, text=True, check=True)
  table = [line.split() for line in result.stdout.splitlines()]
  assert ['unsplit', 'female', '30', '0', '30', '-'] in table
  assert ['train', 'female', '-', '-', '24', '12'] in table
  assert ['test', 'male', '-', '-', '2', '2'] in table
  assert ['total', '50', '0', '50', '30'] in table
  assert len((tmp_path / 'work' / 'protocol' / 'train.txt').read_text().splitlines()) == 20


# --- Build once, reuse, rebuild -----------------------------------------------------------------


def test_reused_when_unchanged_rebuilt_when_changed(folder, tmp_path, monkeypatch):
  config = make_config(folder, tmp_path / 'tfds')
  first = face_dataset.build(config.data_dir, config.tfds_dir)
  calls = []
  monkeypatch.setattr(face_dataset.FaceFolder, '_split_generators',
                      lambda self, dl: calls.append(1) or pytest.fail('rebuilt'))
  assert face_dataset.build(config.data_dir, config.tfds_dir).data_dir == first.data_dir
  monkeypatch.undo()
  (folder / 'test' / 'male' / 'new.jpg').write_bytes(_jpeg_bytes(999))
  second = face_dataset.build(config.data_dir, config.tfds_dir)
  assert second.data_dir != first.data_dir
  assert second.info.splits['test'].num_examples == sum(COUNTS['test']) + 1


def test_read_only_source_is_never_written(folder, tmp_path):
  before = _snapshot(folder)
  os.chmod(folder, 0o555)  # As root this cannot stop writes, so compare the tree as well.
  try:
    protocol.load_splits(make_config(folder, tmp_path / 'tfds'), workdir=tmp_path / 'work').splits
  finally:
    os.chmod(folder, 0o755)
  assert _snapshot(folder) == before


def test_decoded_cache_is_reused(folder, tmp_path, monkeypatch):
  config = make_config(folder, tmp_path / 'tfds')
  first = protocol.load_splits(config).splits
  monkeypatch.setattr(input_cache, '_decode_convert', lambda *a, **k: pytest.fail('decoded'))
  second = protocol.load_splits(config).splits
  np.testing.assert_array_equal(first['train'].images, second['train'].images)


# --- The protocol -------------------------------------------------------------------------------


def _draw(folder, tmp_path, **overrides):
  config = make_config(folder, tmp_path / 'tfds', **{
      'num_train': 10, 'num_valid': 4, 'num_test': 5, **overrides})
  return protocol.load_splits(config).splits


def test_protocol_is_deterministic_per_seed(folder, tmp_path):
  a, b, c = (_draw(folder, tmp_path, seed=s) for s in (0, 0, 1))
  assert all(a[s].paths == b[s].paths for s in a)
  assert a['train'].paths != c['train'].paths


def test_protocol_split_does_not_depend_on_the_others_loaded(folder, tmp_path):
  everything = _draw(folder, tmp_path)
  config = make_config(folder, tmp_path / 'tfds', num_train=10, num_valid=4, num_test=5)
  assert protocol.load_splits(config, splits=('test',)).splits['test'].paths == \
      everything['test'].paths


def test_protocol_is_stratified(folder, tmp_path):
  drawn = _draw(folder, tmp_path)
  # train 12/8 -> 10 drawn: 6/4; valid 5/5 -> 4: 2/2; test 6/4 -> 5: 3/2.
  assert {s: np.bincount(v.labels).tolist() for s, v in drawn.items()} == {
      'train': [6, 4], 'valid': [2, 2], 'test': [3, 2]}


def test_protocol_too_large_says_what_exists(folder, tmp_path):
  with pytest.raises(ValueError, match=r'Asked for 11 valid images but the folder has 10 '
                                       r'\(5 female, 5 male\)'):
    _draw(folder, tmp_path, num_valid=11)


def test_protocol_file_lists_in_workdir(folder, tmp_path):
  config = make_config(folder, tmp_path / 'tfds', num_train=10)
  loaded = protocol.load_splits(config, workdir=tmp_path / 'work').splits
  for name, split in loaded.items():
    lines = (tmp_path / 'work' / 'protocol' / f'{name}.txt').read_text().splitlines()
    assert lines == [f'{p}\t{l}' for p, l in zip(split.paths, split.labels)]
  protocol.load_splits(config, workdir=tmp_path / 'work').splits  # Same lists: fine.
  config.seed = 1
  with pytest.raises(ValueError, match='train.txt lists other files'):
    protocol.load_splits(config, workdir=tmp_path / 'work').splits


def test_protocol_draws_same_files_for_same_paths():
  paths = [f'train/{c}/{i:03d}.jpg' for c in ('female', 'male') for i in range(50)]
  labels = np.array([0] * 50 + [1] * 50, np.int32)
  shuffled = np.random.default_rng(3).permutation(100)
  a = protocol.draw_protocol({'train': (paths, labels)}, {'train': 30}, seed=7)['train']
  b = protocol.draw_protocol(
      {'train': ([paths[i] for i in shuffled], labels[shuffled])}, {'train': 30}, seed=7)['train']
  assert [paths[i] for i in a.rows] == [paths[i] for i in shuffled[b.rows]]


# --- Resizing and augmentation ------------------------------------------------------------------


def test_resize_stretch_and_center_crop():
  image = np.zeros((40, 20, 3), np.uint8)  # Tall: top quarter red, bottom quarter blue.
  image[:10, :, 0] = 255
  image[30:, :, 2] = 255
  pil = Image.fromarray(image)
  stretched = align.resize_image(pil, 8, 'stretch')
  cropped = align.resize_image(pil, 8, 'center_crop')
  assert stretched.shape == cropped.shape == (8, 8, 3)
  assert stretched[0, 0].tolist() == [255, 0, 0] and stretched[-1, 0].tolist() == [0, 0, 255]
  assert not cropped.any()  # The central 20x20 square is all black.
  with pytest.raises(ValueError, match='Unknown resize'):
    align.resize_image(pil, 8, 'squash')


def _draws(flip, dy, dx):
  """An 'augment' row with a flip and shift and the jitter's factors at identity."""
  row = dict.fromkeys(augment.DRAWS, 0.0) | dict(scale=1.0, aspect=1.0, brightness=1.0,
                                                 contrast=1.0, saturation=1.0)
  return np.array([[(row | dict(flip=flip, dy=dy, dx=dx))[k] for k in augment.DRAWS]],
                  np.float32)


def test_augment_shifts_with_edge_pixels_and_flips():
  image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
  shifted = augment.apply(image, _draws(0, 1, -1), augment.Jitter())
  np.testing.assert_array_equal(shifted[0, ..., 0], [[4, 4, 5, 6], [8, 8, 9, 10],
                                                     [12, 12, 13, 14], [12, 12, 13, 14]])
  flipped = augment.apply(image, _draws(1, 0, 0), augment.Jitter())
  np.testing.assert_array_equal(flipped[0], image[0, :, ::-1])


# --- Batches ------------------------------------------------------------------------------------


def _split(n, size=6):
  images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), np.uint8)
  return batching.Split('train', images, np.arange(n, dtype=np.int32) % 2,
                              [f'{i}.jpg' for i in range(n)], '/faces')


def _concat(batches_per_process):
  return [{k: np.concatenate([b[k] for b in step]) for k in step[0]}
          for step in zip(*batches_per_process)]


def test_train_batches_do_not_depend_on_process_count():
  split = _split(50)
  kwargs = dict(seed=3, epoch=2, flip=True, shift=0.2)
  one = list(augment.train_batches(split, 8, process_index=0, process_count=1, **kwargs))
  two = _concat([list(augment.train_batches(split, 8, process_index=i, process_count=2,
                                                   **kwargs)) for i in range(2)])
  assert len(one) == len(two) == batching.num_train_steps(split, 8) == 6
  for a, b in zip(one, two):
    assert a.keys() == b.keys() == {'index', 'flip', 'label', 'image', 'augment'}
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  indices = np.concatenate([b['index'] for b in one])
  assert len(set(indices.tolist())) == 48  # A permutation, the last partial batch dropped.


def test_train_batches_are_seeded_per_epoch():
  split = _split(40)
  order = lambda epoch, seed=0: np.concatenate([b['index'] for b in augment.train_batches(
      split, 8, seed=seed, epoch=epoch, flip=True, process_index=0, process_count=1)])
  np.testing.assert_array_equal(order(0), order(0))
  assert (order(0) != order(1)).any() and (order(0) != order(0, seed=1)).any()


def test_flip_flags_match_the_images():
  split = _split(64)
  batches = list(augment.train_batches(split, 32, seed=0, epoch=0, flip=True,
                                              process_index=0, process_count=1))
  flags = np.concatenate([b['flip'] for b in batches])
  assert 10 < flags.sum() < 54  # Random per example.
  for batch in batches:
    original = split.images[batch['index']]
    np.testing.assert_array_equal(batch['image'], original)  # As stored: augmented on device.
    expected = np.where(batch['flip'][:, None, None, None], original[:, :, ::-1], original)
    np.testing.assert_array_equal(
        augment.apply(batch['image'], batch['augment'], augment.Jitter()), expected)
    np.testing.assert_array_equal(batch['label'], split.labels[batch['index']])
  no_flip = next(augment.train_batches(split, 32, seed=0, epoch=0, flip=False,
                                              with_images=False, process_index=0,
                                              process_count=1))
  assert no_flip.keys() == {'index', 'flip', 'label'} and not no_flip['flip'].any()


def test_train_batches_need_one_full_batch():
  with pytest.raises(ValueError, match='fewer than one batch'):
    next(augment.train_batches(_split(5), 8, seed=0, epoch=0, flip=False,
                                      process_index=0, process_count=1))


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_batches_cover_every_example_once(process_count):
  split = _split(21)
  batches = _concat([list(batching.eval_batches(split, 8, process_index=i,
                                                      process_count=process_count))
                     for i in range(process_count)])
  assert len(batches) == 3
  index = np.concatenate([b['index'] for b in batches])
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.dtype == np.float32 and mask.sum() == 21
  np.testing.assert_array_equal(index[mask == 1], np.arange(21))
  for b in batches:
    np.testing.assert_array_equal(b['image'], split.images[b['index']])
    np.testing.assert_array_equal(b['label'], split.labels[b['index']])


def test_batch_size_must_split_over_processes():
  with pytest.raises(ValueError, match='does not split over 3 processes'):
    next(batching.eval_batches(_split(8), 8, process_index=0, process_count=3))


# --- The real faces -----------------------------------------------------------------------------


def test_real_faces_counts(celeba_gender_dir):
  scan = face_dataset.scan_folder(celeba_gender_dir)
  assert {s: len(v) for s, v in scan.examples.items()} == {
      'train': 8016, 'valid': 1006, 'test': 978}


def test_real_faces_protocol(celeba_gender_dir, tmp_path):
  builder = face_dataset.build(celeba_gender_dir, tmp_path / 'tfds')
  index = {s: face_dataset.read_index(builder, s) for s in builder.info.splits}
  drawn = protocol.draw_protocol(index, {'train': 5000, 'valid': 750, 'test': 750}, seed=0)
  assert {s: len(d.rows) for s, d in drawn.items()} == {'train': 5000, 'valid': 750, 'test': 750}
  counts = {s: np.bincount(index[s][1][d.rows]).tolist() for s, d in drawn.items()}
  assert counts == {'train': [2865, 2135], 'valid': [469, 281], 'test': [430, 320]}


def test_record_arrays_are_npy_files_read_and_written_by_row(tmp_path):
  path = str(tmp_path / 'rows.npy')
  array = record_files.RecordArray(path, (5, 2, 3), np.uint8)
  array[np.array([3, 1])] = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
  array.flush()
  saved = np.load(path)  # numpy reads what was written: the same format.
  assert saved.shape == (5, 2, 3) and saved[0].sum() == 0
  np.testing.assert_array_equal(saved[[3, 1]], np.arange(12).reshape(2, 2, 3))
  again = record_files.RecordArray(path)
  np.testing.assert_array_equal(again[np.array([1, 3])], saved[[1, 3]])
  np.testing.assert_array_equal(again[4], saved[4])
  rows = record_files.Rows(again, [3, 1, 0])
  np.testing.assert_array_equal(rows[1:], saved[[1, 0]])
  np.testing.assert_array_equal(np.asarray(rows.subset(np.array([True, False, True]))),
                                saved[[3, 0]])
