"""The study written the way its Keras users write it: the baseline gender_jax is timed against.

Keras 3 on TensorFlow. Pretrained models keep their frozen VGG16 base inside the model (so every
epoch runs it on every image again), a Flatten -> Dense(256) -> Dropout(0.5) -> Dense(1) head,
Adam and binary cross-entropy, `image_dataset_from_directory` reading JPEGs each epoch,
`model.fit` with validation, then `model.evaluate` on test. The custom model is a plain 4-block
CNN trained from scratch. Both sides read the same files: the lists a gender_jax run wrote to
WORKDIR/protocol/*.txt are symlinked into a class-per-folder tree.

Runs only in a TensorFlow environment kept apart from the project's (which must stay TF-free;
benchmarks/README.md says how to make one), with its interpreter as $KERAS_PYTHON:

  "$KERAS_PYTHON" benchmarks/keras_study.py --protocol=RUN/protocol \
      --data_dir=../shared/data/celeba_gender --image_size=112 --epochs=3 --json=keras.json

Prints one JSON object per model, then all of them as one list (and writes it to --json).
"""
import argparse
import json
import os
import tempfile
import time

os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

try:
  import keras  # pylint: disable=g-import-not-at-top
except ImportError as e:
  raise SystemExit(
      f'keras_study.py needs a Python with tensorflow and keras ({e}): make a venv apart from '
      'the project environment (python3 -m venv VENV && VENV/bin/pip install tensorflow keras '
      'pillow) and run this script with VENV/bin/python (KERAS_PYTHON for study_vs_keras.py).'
  ) from None

CLASS_NAMES = ('female', 'male')  # Label 0 = female, 1 = male, as in gender_jax.
SPLITS = ('train', 'valid', 'test')
# keras_vggface.utils.preprocess_input(version=1): BGR means of the VGGFace training faces.
VGGFACE_BGR_MEANS = (93.5940, 104.7624, 129.1863)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--protocol', required=True,
                      help='A gender_jax run\'s protocol folder: {train,valid,test}.txt.')
  parser.add_argument('--data_dir', required=True, help='The folder the protocol paths are in.')
  parser.add_argument('--models', default='custom,vgg16,vggface')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--epochs', type=int, default=10)
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--learning_rate', type=float, default=1e-4,
                      help='Adam learning rate of the pretrained models.')
  parser.add_argument('--custom_learning_rate', type=float, default=1e-3)
  parser.add_argument('--vgg16_weights', default=None,
                      help='A notop VGG16 h5 file; random weights when not given.')
  parser.add_argument('--vggface_weights', default=None,
                      help='A notop VGG16-layout h5 with VGGFace weights; random when not given.')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', default='', help='Also write the results to this file.')
  return parser.parse_args(argv)


def link_protocol(protocol_dir, data_dir, out_dir):
  """Symlinks each split's listed files ("relpath<TAB>label") into out/split/class/; counts."""
  counts = {}
  for split in SPLITS:
    for name in CLASS_NAMES:
      os.makedirs(os.path.join(out_dir, split, name))
    with open(os.path.join(protocol_dir, f'{split}.txt')) as f:
      lines = [line.rstrip('\n').split('\t') for line in f if line.strip()]
    for relpath, label in lines:
      # Flattened relative paths keep names unique whatever folders the files came from.
      link = os.path.join(out_dir, split, CLASS_NAMES[int(label)], relpath.replace('/', '__'))
      os.symlink(os.path.abspath(os.path.join(data_dir, relpath)), link)
    counts[split] = len(lines)
  return counts


def datasets(folder, image_size, batch_size, seed):
  """{split: tf.data.Dataset} of (float 0..255 images, float labels), as the tutorials do."""
  return {
      split: keras.utils.image_dataset_from_directory(
          os.path.join(folder, split), labels='inferred', label_mode='binary',
          class_names=list(CLASS_NAMES), image_size=(image_size, image_size),
          batch_size=batch_size, shuffle=split == 'train', seed=seed, verbose=False)
      for split in SPLITS}


def head(x):
  x = keras.layers.Flatten()(x)
  x = keras.layers.Dense(256, activation='relu')(x)
  x = keras.layers.Dropout(0.5)(x)
  return keras.layers.Dense(1, activation='sigmoid')(x)


def vgg_model(image_size, weights, bgr_means=None):
  """Frozen keras.applications.VGG16 base inside the model, caffe (or given BGR) means."""
  inputs = keras.Input((image_size, image_size, 3))
  if bgr_means is None:
    x = keras.applications.vgg16.preprocess_input(inputs)
  else:
    x = keras.layers.Lambda(lambda t: t[..., ::-1] - keras.ops.convert_to_tensor(bgr_means))(
        inputs)
  base = keras.applications.VGG16(include_top=False, weights=None,
                                  input_shape=(image_size, image_size, 3))
  if weights:
    base.load_weights(weights)
  base.trainable = False
  return keras.Model(inputs, head(base(x, training=False)))


def custom_model(image_size):
  """The study's kind of CNN from scratch: (Conv3x3-ReLU-MaxPool) x 4, 32/64/128/128 filters."""
  inputs = keras.Input((image_size, image_size, 3))
  x = keras.layers.Rescaling(1 / 255)(inputs)
  for filters in (32, 64, 128, 128):
    x = keras.layers.Conv2D(filters, 3, activation='relu')(x)
    x = keras.layers.MaxPooling2D(2)(x)
  return keras.Model(inputs, head(x))


def build(name, args):
  if name == 'custom':
    return custom_model(args.image_size), args.custom_learning_rate
  if name == 'vgg16':
    return vgg_model(args.image_size, args.vgg16_weights), args.learning_rate
  if name == 'vggface':
    return (vgg_model(args.image_size, args.vggface_weights, VGGFACE_BGR_MEANS),
            args.learning_rate)
  raise ValueError(f'Unknown model {name!r}.')


class EpochTimes(keras.callbacks.Callback):
  """Wall seconds of each epoch, validation included."""

  def on_epoch_begin(self, epoch, logs=None):
    self.start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.seconds = getattr(self, 'seconds', []) + [time.perf_counter() - self.start]


def run_model(name, folder, args):
  """Builds, fits (with validation) and evaluates one model; wall times and accuracies."""
  start = time.perf_counter()
  keras.utils.set_random_seed(args.seed)
  data = datasets(folder, args.image_size, args.batch_size, args.seed)
  model, learning_rate = build(name, args)
  model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss='binary_crossentropy',
                metrics=['accuracy'])
  fit_start = time.perf_counter()
  epoch_times = EpochTimes()
  history = model.fit(data['train'], validation_data=data['valid'], epochs=args.epochs,
                      verbose=2, callbacks=[epoch_times])
  evaluate_start = time.perf_counter()
  test_loss, test_accuracy = model.evaluate(data['test'], verbose=0)
  end = time.perf_counter()
  return {
      'model': name, 'seconds': end - start, 'fit_seconds': evaluate_start - fit_start,
      'evaluate_seconds': end - evaluate_start, 'epoch_seconds': epoch_times.seconds,
      'test_accuracy': float(test_accuracy),
      'test_loss': float(test_loss),
      'valid_accuracy': [float(a) for a in history.history['val_accuracy']],
      'random_base': name != 'custom' and not getattr(args, f'{name}_weights'),
      'trainable_params': int(sum(keras.ops.size(w) for w in model.trainable_weights)),
  }


def main(argv=None):
  args = parse_args(argv)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  info = {'keras': keras.__version__, 'tensorflow': tf.__version__,
          'devices': [d.name for d in tf.config.list_physical_devices()],
          'image_size': args.image_size, 'epochs': args.epochs, 'batch_size': args.batch_size}
  results = []
  with tempfile.TemporaryDirectory(prefix='keras_study_') as folder:
    info['counts'] = link_protocol(args.protocol, args.data_dir, folder)
    print(json.dumps(info), flush=True)
    for name in args.models.split(','):
      results.append(run_model(name, folder, args))
      print(json.dumps(results[-1]), flush=True)
  out = {'info': info, 'results': results}
  print(json.dumps(out))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(out, f, indent=1)
  return out


if __name__ == '__main__':
  main()
