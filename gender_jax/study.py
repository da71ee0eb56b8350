"""The model comparison study: custom, vgg16, vggface and face_resnet on one protocol, then the
report.

  python -m gender_jax.study --workdir=runs/study --config.data_dir=PATH [--config.field=value]
  python -m gender_jax.study --workdir=runs/tiny --config=configs/tiny.py:custom
  python -m gender_jax.study --workdir=runs/curve --models=custom \
      --sizes=250,500,1000,2000,5000 --seeds=0,1,2

--sizes and --seeds make a sweep: every model at every training-set size (num_train) and training
seed (train_seed: initialisation, order, jitter). The protocol's seed (--config.seed) stays, so
the validation and test images are the same at every point, and the sizes are drawn from one pool.
Each point is its own run, workdir/<model>/train<size>_seed<seed>; a rerun skips finished points.

Each model starts from configs/<model>.py, or, when --config takes an argument
(`file.py:arg`), from that file's get_config(<model>); the fields set on the command line then
override every model. Without a sweep, runs go to workdir/<model>; rerunning resumes unfinished
runs from their checkpoints. A pretrained model whose converted weights are missing is skipped with the commands
that make them, and the skip is recorded in workdir/study.json and the report.
"""
import datetime
import os
import platform
from typing import NamedTuple

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

from gender_jax import base_config
from gender_jax import cli
from gender_jax import config_check
from gender_jax.models import networks as models_lib
from gender_jax.models import weights_folder
from gender_jax.report import document
from gender_jax.training import run_dir
from gender_jax.training import train

MODELS = tuple(models_lib.REGISTRY)


def experiment_configs(models, config_filename, overrides):
  """{model: config}: each model's base config with the command line's fields applied.

  `config_filename` is --config's value: 'configs/default.py' (each model's own configs/<model>.py)
  or 'file.py:arg' (file's get_config(model) for each model).
  """
  if 'model' in overrides:
    raise app.UsageError('The study runs several models: choose them with --models, not '
                         '--config.model.')
  pretrained = [m for m in models if models_lib.REGISTRY[m].pretrained]
  if 'weights' in overrides and len(pretrained) > 1:
    raise app.UsageError(f'--config.weights would give {", ".join(pretrained)} the same weights '
                         'folder; each has its own (configs/<model>.py). Convert them there, or '
                         'run one pretrained model per study.')
  path, has_arg, _ = config_filename.partition(':')
  if not has_arg and os.path.basename(path) != 'default.py':
    raise app.UsageError(
        f'--config={config_filename}: the study builds each experiment from configs/<model>.py, '
        f"so this file's own values would be ignored. Override fields with --config.field=value, "
        'or pass a config that takes the model name, like --config=configs/tiny.py:custom.')
  experiments = {}
  for model in models:
    if has_arg:
      config = base_config.load_get_config(path)(model)
    else:  # The model's own file beside default.py.
      config = base_config.load_get_config(os.path.join(os.path.dirname(path), f'{model}.py'))()
    config.update_from_flattened_dict(overrides)
    if config.model != model:
      raise ValueError(f'{config_filename} gave model={config.model!r} for {model!r}.')
    experiments[model] = config
  return experiments


class Point(NamedTuple):
  """One run of a study: a model's config at one training-set size and training seed."""
  name: str  # Its folder in the study's workdir, and its key in study.json.
  model: str
  config: ml_collections.ConfigDict


def sweep_points(experiments, sizes=(), seeds=()):
  """[Point]: every {model: config} at every size and seed, seed by seed, smallest size first.

  With neither sizes nor seeds: one point per model, named after it (the study of one protocol).
  Seed-major order, so a sweep stopped part-way holds whole curves for its first seeds.
  """
  if not sizes and not seeds:
    return [Point(model, model, config) for model, config in experiments.items()]
  points = []
  for seed in seeds or [None]:
    for size in sorted(sizes) or [None]:
      for model, config in experiments.items():
        config = ml_collections.ConfigDict(config.to_dict())
        if size is not None:
          config.num_train = size
        if seed is not None:
          config.train_seed = seed
        name = f'{model}/train{config.num_train}_seed{train.resolved_train_seed(config)}'
        points.append(Point(name, model, config))
  return points


def machine():
  """Where the study ran: enough to tell a laptop CPU from a GPU server."""
  return {'platform': platform.platform(), 'python': platform.python_version(),
          'jax': jax.__version__, 'backend': jax.default_backend(),
          'devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}'}


def _now():
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def run_study(points, workdir, command=None):
  """Trains and evaluates each Point into workdir/<point.name>, then writes the report.

  Returns the study record (also workdir/study.json). A rerun skips finished points, resumes
  unfinished ones, and keeps the entries of points it does not run, so one report covers them
  all. Missing converted weights skip that point; any other failure stops the study.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, run_dir.STUDY)
  previous = run_dir.read_json(path) if os.path.exists(path) else {}
  study = {'command': command, 'started': _now(), 'finished': None,
           'experiments': previous.get('experiments', {})}
  for i, point in enumerate(points):
    run = os.path.join(workdir, point.name)
    print(f'Point {i + 1}/{len(points)}: {point.name} in {run}', flush=True)
    # A finished point is still passed to training, which refuses it if the config changed.
    done = (study['experiments'].get(point.name, {}).get('status') == 'done' and
            run_dir.finished_results(run, point.config))
    entry = study['experiments'][point.name] if done else None
    if not done:
      entry = study['experiments'][point.name] = {
          'status': 'running', 'model': point.model, 'workdir': point.name,
          'num_train': point.config.num_train,
          'train_seed': train.resolved_train_seed(point.config),
          'command': command, 'machine': machine(), 'started': _now()}
      run_dir.write_json(path, study)
    try:
      results = train.train_and_evaluate(point.config, run, command)
    except weights_folder.MissingWeightsError as e:
      entry.update(status='skipped', reason=str(e), finished=_now())
      print(f'\nSkipping {point.name}: {e}\n', flush=True)
    else:
      if not done:
        entry.update(status='done', test_accuracy=results['metrics']['accuracy'],
                     finished=_now())
    run_dir.write_json(path, study)
  study['finished'] = _now()
  run_dir.write_json(path, study)
  if jax.process_index() == 0:
    document.write_report([workdir], workdir)
  return study


def summary(study, workdir):
  lines = [f'Study in {workdir}:']
  width = max(map(len, study['experiments']), default=0)
  for name, e in study['experiments'].items():
    # A skip's first sentence; its commands are printed above and kept in the report.
    detail = (f"test accuracy {e['test_accuracy']:.4f}" if e['status'] == 'done' else
              e.get('reason', '').split('. ')[0])
    lines.append(f"  {name:{width}s} {e['status']:8s} {detail}")
  lines.append(f"Report: {os.path.join(workdir, 'report.md')}")
  return '\n'.join(lines)


FLAGS = flags.FLAGS


def define_flags():
  """Defines the command line flags; only when run as a script, so imports never clash."""
  flags.DEFINE_string('workdir', None, 'The study folder: one run folder per model, the report.')
  flags.DEFINE_list('models', list(MODELS), 'The models to run, in this order.')
  flags.DEFINE_list('sizes', [], 'Training-set sizes (num_train) to sweep, e.g. 250,500,1000.')
  flags.DEFINE_list('seeds', [], 'Training seeds (train_seed) to sweep, e.g. 0,1,2.')
  config_flags.DEFINE_config_file(
      'config', 'configs/default.py', 'Fields set here (--config.field=value) override every '
      "experiment; a file taking an argument (configs/tiny.py:custom) is called with each model.",
      lock_config=True)
  flags.mark_flags_as_required(['workdir'])


def _integers(name, minimum):
  """The integers of list flag --name, each at least minimum, or a UsageError naming the flag."""
  values = FLAGS[name].value
  if not all(v.strip().isdigit() and int(v) >= minimum for v in values):
    raise app.UsageError(f'--{name}={",".join(values)}: expected whole numbers >= {minimum}, '
                         f'separated by commas.')
  return list(dict.fromkeys(map(int, values)))  # Each point once.


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  unknown = set(FLAGS.models) - set(MODELS)
  if unknown:
    raise app.UsageError(f'Unknown models {sorted(unknown)}; expected some of {MODELS}.')
  experiments = experiment_configs(FLAGS.models,
                                   config_flags.get_config_filename(FLAGS['config']),
                                   config_flags.get_override_values(FLAGS['config']))
  points = sweep_points(experiments, _integers('sizes', minimum=1), _integers('seeds', minimum=0))
  for point in points:  # Every point's mistakes before the first point's work.
    config_check.check(point.config, jax.device_count())
  command = cli.command_line('gender_jax.study')
  study = run_study(points, FLAGS.workdir, command)
  print(summary(study, FLAGS.workdir))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
