"""Evaluates the best checkpoint of a run on a split of its protocol or on any labelled folder.

  python -m gender_jax.evaluate --workdir=runs/vggface [--split=test | --folder=PATH
      [--labels_csv=PATH/labels.csv]]

Prints a table and writes workdir/eval_<split or folder name>.json. With --labels_csv, the
folder's images are also grouped by each extra column of the CSV (age by decade, race, ...):
metrics per group in the JSON and the table, and a bar chart in eval_<name>_groups.png.
"""
import os

from absl import app
from absl import flags

from gender_jax.analysis import groups as groups_lib
from gender_jax.analysis import metrics as metrics_lib
from gender_jax import cli
from gender_jax.data import protocol
from gender_jax.faces import inputs
from gender_jax import LABELS
from gender_jax.training import run_dir
from gender_jax.training import trained_run

FLAGS = flags.FLAGS


def define_flags():
  """Flags of the command line only, so importing this module defines none."""
  flags.DEFINE_string('workdir', None, 'A run directory written by gender_jax.main.')
  flags.DEFINE_enum('split', 'test', ['train', 'valid', 'test'], 'A split of the run\'s protocol.')
  flags.DEFINE_string('folder', None, 'Evaluate on this labelled folder (male/female '
                      'subfolders) instead of a split.')
  flags.DEFINE_string('data_dir', None, 'Override the run\'s face folder (if it moved).')
  flags.DEFINE_integer('batch_size', None, "Images per forward pass (default: the run's "
                       'eval_batch_size).')
  flags.DEFINE_string('labels_csv', None, 'With --folder: a CSV with a relpath column (image '
                      'paths relative to the folder) and columns to group the metrics by (e.g. '
                      'age, race).')
  flags.mark_flags_as_required(['workdir'])


# --- Evaluation ------------------------------------------------------------------------------


def evaluate(workdir, split='test', folder=None, data_dir=None, batch_size=None,
             labels_csv=None):
  """Metrics of the run's best checkpoint on a split of its protocol, or on a folder of faces.

  With labels_csv (and a folder), also metrics per group of each of the CSV's columns. Written
  to workdir/eval_<name>.json, named for what was evaluated (run_dir.evaluation_name).
  """
  if labels_csv and not folder:
    raise groups_lib.LabelsCsvError('--labels_csv needs --folder: its paths are relative to '
                                    'that folder.')
  if labels_csv:
    table, columns = groups_lib.read_labels_csv(labels_csv)  # Fails before the slow work.
  trained = trained_run.load_trained(workdir)
  config = trained.config
  name = run_dir.evaluation_name(split, folder, data_dir, config.data_dir)
  if folder:
    face_input = inputs.FaceInput.from_config(config)  # The run's own face pipeline.
    data = protocol.load_folder(folder, face_input, protocol.face_finder(face_input))
  else:
    config.data_dir = data_dir or config.data_dir
    data = protocol.load_splits(config, splits=(split,)).splits[split]
  # The run's own batch size by default: the same compiled step, so a split's logits are the
  # very ones its training run evaluated.
  logits = trained_run.predict_logits(trained, data.images, batch_size or config.eval_batch_size)
  evaluated = folder or (split if name == split else f'{split} split of {data_dir}')
  result = {'workdir': os.path.abspath(workdir), 'evaluated': evaluated,
            'checkpoint_epoch': trained.epoch,
            'metrics': metrics_lib.classification_metrics(data.labels, logits),
            'no_face': len(data.no_face)}
  if labels_csv:
    rows = groups_lib.match_rows(data, folder, table, labels_csv)
    result['labels_csv'] = os.path.abspath(labels_csv)
    result['groups'] = groups_lib.evaluate_groups(data.labels, logits, rows, columns)
  try:
    if result.get('groups'):
      result['groups_figure'] = os.path.join(workdir, f'eval_{name}_groups.png')
      groups_lib.plot_groups(result['groups'], result['metrics']['accuracy'],
                             result['groups_figure'])
    run_dir.write_json(run_dir.path(workdir, run_dir.evaluation_file(name)), result)
  except OSError as e:  # A read-only or full run directory: the numbers are still shown.
    result.pop('groups_figure', None)
    result['not_saved'] = cli.environment_fault(e) or str(e)
  return result


def format_table(result):
  m = result['metrics']
  rows = [('examples', f"{m['num_examples']} ({m['num_female']} female, {m['num_male']} male)")]
  rows += [(k, metrics_lib.with_interval(m, k, separator='  '))
           for k in ('accuracy', 'balanced_accuracy', 'precision', 'recall', 'f1', 'roc_auc',
                     'loss')]
  rows += [(f'accuracy {c}', f"{m['per_class_accuracy'][c]:.4f}") for c in LABELS]
  if result.get('no_face'):
    rows += [('no face found', f"{result['no_face']} images (resized whole or left out, as the "
                               'run was trained)')]
  (tn, fp), (fn, tp) = m['confusion_matrix']
  rows += [('confusion (true\\pred)', f'female: {tn} {fp} | male: {fn} {tp}')]
  width = max(len(k) for k, _ in rows)
  title = f"{result['workdir']} (best epoch {result['checkpoint_epoch']}) on {result['evaluated']}"
  lines = [title] + [f'  {k:<{width}}  {v}' for k, v in rows]
  if 'intervals' in m:
    lines.append('  [low, high]: 95% bootstrap interval over the examples')
  for column, g in result.get('groups', {}).items():
    lines += ['', groups_lib.format_groups(column, g)]
  if result.get('groups_figure'):
    lines += ['', f"Figure: {result['groups_figure']}"]
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  result = evaluate(FLAGS.workdir, FLAGS.split, FLAGS.folder, FLAGS.data_dir,
                    FLAGS.batch_size, FLAGS.labels_csv)
  print(format_table(result))
  if 'not_saved' in result:
    raise SystemExit(f"error: the numbers above are not saved: {result['not_saved']}")


if __name__ == '__main__':
  define_flags()
  cli.run(main)
