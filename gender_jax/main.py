"""Trains and evaluates one experiment.

  python -m gender_jax.main --config=configs/vggface.py --workdir=runs/vggface \
      [--config.num_epochs=5 ...]

Rerunning the same command resumes from the latest checkpoint in --workdir.
"""
from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from gender_jax import cli
from gender_jax.training import train

FLAGS = flags.FLAGS


def define_flags():
  """Defines the command line flags; only when run as a script, so imports never clash."""
  flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and results go.')
  config_flags.DEFINE_config_file('config', None, 'An experiment config file (configs/*.py).',
                                  lock_config=True)
  flags.DEFINE_string('coordinator_address', None,
                      'Multi-host runs: host:port of process 0 (else auto-detected on TPU/Slurm).')
  flags.DEFINE_integer('num_processes', None, 'Multi-host runs: the number of processes.')
  flags.DEFINE_integer('process_id', None, 'Multi-host runs: this process\'s index.')
  flags.DEFINE_bool('multihost', False, 'Join a multi-host run through jax.distributed.')
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.multihost or FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  logging.info('Process %d of %d; local devices: %s', jax.process_index(), jax.process_count(),
               jax.local_devices())
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir, cli.command_line('gender_jax.main'))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
