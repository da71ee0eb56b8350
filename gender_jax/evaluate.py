"""Evaluates the best checkpoint of a run on a split of its protocol or on any labelled folder.

  python -m gender_jax.evaluate --workdir=runs/vggface [--split=test | --folder=PATH]

Prints a table and writes workdir/eval_<split or folder name>.json.
"""
import json
import os

from absl import app
from absl import flags

from gender_jax import LABELS
from gender_jax import inference
from gender_jax import input_pipeline
from gender_jax import metrics as metrics_lib

FLAGS = flags.FLAGS


def define_flags():
  """Flags of the command line only, so importing this module defines none."""
  flags.DEFINE_string('workdir', None, 'A run directory written by gender_jax.main.')
  flags.DEFINE_enum('split', 'test', ['train', 'valid', 'test'], 'A split of the run\'s protocol.')
  flags.DEFINE_string('folder', None, 'Evaluate on this labelled folder (male/female '
                      'subfolders) instead of a split.')
  flags.DEFINE_string('data_dir', None, 'Override the run\'s face folder (if it moved).')
  flags.DEFINE_integer('batch_size', 256, 'Images per forward pass.')
  flags.mark_flags_as_required(['workdir'])


def evaluate(workdir, split='test', folder=None, data_dir=None, batch_size=256):
  """Metrics of the run's best checkpoint; the same protocol files the run used."""
  trained = inference.load_trained(workdir)
  config = trained.config
  if folder:
    detector, _ = input_pipeline.load_detector(config)  # The run's own face pipeline.
    data = input_pipeline.load_folder(folder, config, detector)
    name = os.path.basename(os.path.normpath(folder))
  else:
    if data_dir:
      config.data_dir = data_dir
    data = input_pipeline.load_splits(config, splits=(split,))[split]
    name = split
  logits = inference.predict_logits(trained, data.images, batch_size)
  result = {'workdir': os.path.abspath(workdir), 'evaluated': folder or split,
            'checkpoint_epoch': trained.epoch,
            'metrics': metrics_lib.classification_metrics(data.labels, logits)}
  with open(os.path.join(workdir, f'eval_{name}.json'), 'w') as f:
    json.dump(result, f, indent=2)
  return result


def format_table(result):
  m = result['metrics']
  rows = [('examples', f"{m['num_examples']} ({m['num_female']} female, {m['num_male']} male)")]
  rows += [(k, f'{m[k]:.4f}') for k in ('accuracy', 'balanced_accuracy', 'precision', 'recall', 'f1', 'roc_auc',
                                        'loss')]
  rows += [(f'accuracy {c}', f"{m['per_class_accuracy'][c]:.4f}") for c in LABELS]
  (tn, fp), (fn, tp) = m['confusion_matrix']
  rows += [('confusion (true\\pred)', f'female: {tn} {fp} | male: {fn} {tp}')]
  width = max(len(k) for k, _ in rows)
  title = f"{result['workdir']} (best epoch {result['checkpoint_epoch']}) on {result['evaluated']}"
  return '\n'.join([title] + [f'  {k:<{width}}  {v}' for k, v in rows])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  print(format_table(evaluate(FLAGS.workdir, FLAGS.split, FLAGS.folder, FLAGS.data_dir,
                              FLAGS.batch_size)))


if __name__ == '__main__':
  define_flags()
  app.run(main)
