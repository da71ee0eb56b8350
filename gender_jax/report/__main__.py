"""Writes the comparison report of trained run directories.

  python -m gender_jax.report RUN_DIR... [--out DIR] [--data_dir DIR] [--sweep_summary FILE]
"""
from absl import app
from absl import flags

from gender_jax import cli
from gender_jax.report import document

FLAGS = flags.FLAGS


def define_flags():
  """Defines the command line flags; only when run as a script, so imports never clash."""
  flags.DEFINE_string('out', None, 'Folder for report.md and figures/ (default: the only RUN_DIR).')
  flags.DEFINE_string('data_dir', None, "Face folder to read test images from (default: each "
                      "run's own data_dir).")
  flags.DEFINE_bool('temperature_scaling', False, "Show P(male) after each run's temperature "
                    'fitted on its validation split.')
  flags.DEFINE_list('sweep_summary', [], 'sweep_summary.json files (as a report writes them, or '
                    'by hand from published means and sds) whose curves to draw beside the runs\' '
                    'in the data-efficiency figure and table.')


def main(argv):
  dirs = argv[1:]
  if not dirs:
    raise app.UsageError('Give one or more RUN_DIRs (run or study directories).')
  if FLAGS.out is None and len(dirs) > 1:
    raise app.UsageError('--out is needed with several RUN_DIRs.')
  path = document.write_report(dirs, FLAGS.out or dirs[0], data_dir=FLAGS.data_dir,
                               temperature_scaling=FLAGS.temperature_scaling,
                               sweep_summaries=FLAGS.sweep_summary)
  print(f'Wrote {path}')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
