"""Builds a face folder's dataset and prints what it holds and what the protocol draws.

  python -m gender_jax.data --config=configs/custom.py [--config.data_dir=PATH] [--workdir=W]
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from gender_jax import cli
from gender_jax import config_check
from gender_jax.data import protocol

FLAGS = flags.FLAGS


def define_flags():
  """Defines the command line flags; only when run as a script, so imports never clash."""
  config_flags.DEFINE_config_file('config', None, 'An experiment config file (configs/*.py).',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Write the protocol file lists to WORKDIR/protocol/.')
  flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config_check.check(FLAGS.config)
  print('\n'.join(protocol.load_protocol(FLAGS.config, FLAGS.workdir).summary))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
