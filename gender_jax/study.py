"""The model comparison study: custom, vgg16 and vggface on one protocol and seed, then the report.

  python -m gender_jax.study --workdir=runs/study --config.data_dir=PATH [--config.field=value]
  python -m gender_jax.study --workdir=runs/tiny --config=configs/tiny.py:custom

Each experiment starts from configs/<model>.py, or, when --config takes an argument
(`file.py:arg`), from that file's get_config(<model>); the fields set on the command line then
override every experiment. Runs go to workdir/<model>; rerunning resumes them from their
checkpoints. A pretrained model whose converted weights are missing is skipped with the commands
that make them, and the skip is recorded in workdir/study.json and the report.
"""
import datetime
import importlib
import importlib.util
import json
import os
import platform
import shlex
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

import configs.default
from gender_jax import pretrained
from gender_jax import report
from gender_jax import train

MODELS = ('custom', 'vgg16', 'vggface')
STUDY_FILE = report.STUDY_FILE


def _config_family(path):
  """The get_config of a config file that takes the model name (like configs/tiny.py)."""
  spec = importlib.util.spec_from_file_location('study_config_family', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config


def experiment_configs(models, config_filename, overrides):
  """{model: config}: each model's base config with the command line's fields applied.

  `config_filename` is --config's value: 'configs/default.py' (each model's own configs/<model>.py)
  or 'file.py:arg' (file's get_config(model) for each model).
  """
  if 'model' in overrides:
    raise app.UsageError('The study runs several models: choose them with --models, not '
                         '--config.model.')
  if 'weights' in overrides and len(set(models) & set(pretrained.SOURCE_OF_MODEL)) > 1:
    raise app.UsageError('--config.weights would give vgg16 and vggface the same weights folder; '
                         'each has its own (configs/vgg16.py, configs/vggface.py). Convert them '
                         'there, or run one pretrained model per study.')
  path, has_arg, _ = config_filename.partition(':')
  if not has_arg and os.path.basename(path) != 'default.py':
    raise app.UsageError(
        f'--config={config_filename}: the study builds each experiment from configs/<model>.py, '
        f"so this file's own values would be ignored. Override fields with --config.field=value, "
        'or pass a config that takes the model name, like --config=configs/tiny.py:custom.')
  experiments = {}
  for model in models:
    if has_arg:
      config = _config_family(path)(model)
    else:
      config = importlib.import_module(f'configs.{model}').get_config()
    config.update_from_flattened_dict(overrides)
    if config.model != model:
      raise ValueError(f'{config_filename} gave model={config.model!r} for {model!r}.')
    experiments[model] = config
  return experiments


def machine():
  """Where the study ran: enough to tell a laptop CPU from a GPU server."""
  return {'platform': platform.platform(), 'python': platform.python_version(),
          'jax': jax.__version__, 'backend': jax.default_backend(),
          'devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}'}


def _now():
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def _write_json(path, value):
  if jax.process_index() == 0:
    with open(path + '.tmp', 'w') as f:
      json.dump(value, f, indent=2)
    os.replace(path + '.tmp', path)


def run_study(experiments, workdir, command=None):
  """Trains and evaluates each {model: config} into workdir/<model>, then writes the report.

  Returns the study record (also workdir/study.json). A rerun updates the entries of the models
  it runs and keeps the others, so one report covers them all. Missing converted weights skip
  that model; any other failure stops the study (finished runs stay, a rerun resumes).
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, STUDY_FILE)
  previous = {}
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
  study = {'command': command, 'started': _now(), 'finished': None,
           'experiments': previous.get('experiments', {})}
  for model, config in experiments.items():
    logging.info('Study: %s into %s', model, os.path.join(workdir, model))
    entry = study['experiments'][model] = {'status': 'running', 'workdir': model,
                                           'command': command, 'machine': machine(),
                                           'started': _now()}
    _write_json(path, study)
    try:
      results = train.train_and_evaluate(config, os.path.join(workdir, model))
    except pretrained.MissingWeightsError as e:
      entry.update(status='skipped', reason=str(e))
      print(f'\nSkipping {model}: {e}\n', flush=True)
    else:
      entry.update(status='done', test_accuracy=results['metrics']['accuracy'])
    entry['finished'] = _now()
    _write_json(path, study)
  study['finished'] = _now()
  _write_json(path, study)
  if jax.process_index() == 0:
    report.write_report([workdir], workdir)
  return study


def summary(study, workdir):
  lines = [f'Study in {workdir}:']
  for model, e in study['experiments'].items():
    # A skip's first sentence; its commands are printed above and kept in the report.
    detail = (f"test accuracy {e['test_accuracy']:.4f}" if e['status'] == 'done' else
              e.get('reason', '').split('. ')[0])
    lines.append(f"  {model:8s} {e['status']:8s} {detail}")
  lines.append(f"Report: {os.path.join(workdir, 'report.md')}")
  return '\n'.join(lines)


FLAGS = flags.FLAGS


def define_flags():
  """Defines the command line flags; only when run as a script, so imports never clash."""
  flags.DEFINE_string('workdir', None, 'The study folder: one run folder per model, the report.')
  flags.DEFINE_list('models', list(MODELS), 'The experiments to run, in this order.')
  config_flags.DEFINE_config_file(
      'config', configs.default.__file__, 'Fields set here (--config.field=value) override every '
      "experiment; a file taking an argument (configs/tiny.py:custom) is called with each model.",
      lock_config=True)
  flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  unknown = set(FLAGS.models) - set(MODELS)
  if unknown:
    raise app.UsageError(f'Unknown models {sorted(unknown)}; expected some of {MODELS}.')
  experiments = experiment_configs(FLAGS.models,
                                   config_flags.get_config_filename(FLAGS['config']),
                                   config_flags.get_override_values(FLAGS['config']))
  command = shlex.join(['python', '-m', 'gender_jax.study', *sys.argv[1:]])
  study = run_study(experiments, FLAGS.workdir, command)
  print(summary(study, FLAGS.workdir))


if __name__ == '__main__':
  define_flags()
  app.run(main)
