"""The whole study with gender_jax against the same study written in Keras on TensorFlow.

Runs `python -m gender_jax.study` (each model's own config, with image size, epochs, batch size,
seed and data overridden alike), then benchmarks/keras_study.py in its TensorFlow environment
(--keras_python, default $KERAS_PYTHON) on the very files our run drew (its protocol lists).
Both run as fresh subprocesses, one after the other, so each wall time covers interpreter start,
imports, data loading, compilation, training and the test evaluation. Prints wall times, test
accuracies and the ratios Keras / gender_jax, and each side's CPU seconds (user + system, all
threads) beside its wall time: a side that idles (tf.data between epochs) spends fewer.

Pretrained weights may be missing: both sides then use random VGG16 bases of the same
architecture (the same cost, so the speed comparison stands; accuracies of those two models mean
nothing, only the custom model's can be compared).

  KERAS_PYTHON=VENV/bin/python python benchmarks/study_vs_keras.py \
      --data_dir=../shared/data/celeba_gender --image_size=64 --epochs=3 \
      --workdir=runs/study_vs_keras --json=study_vs_keras.json

Where the study is too long for one sitting (224 px on 2 cores: hours per VGG model on the Keras
side), measure it model by model (--models=vggface, each into its own --workdir and --json),
then sum the runs into the whole study with --combine; it refuses runs of other settings or
machines and models measured twice:

  python benchmarks/study_vs_keras.py --combine=custom.json,vgg16.json,vggface.json \
      --json=study_vs_keras.json
"""
import argparse
import datetime
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time

from train_step_frameworks import cpu_model  # Beside this file: sys.path[0] when run.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ('custom', 'vgg16', 'vggface')
WALL_ROW, CPU_ROW = 'whole study (wall, subprocess)', 'whole study (CPU, subprocess)'
# What runs summed by --combine must share; the machine too, where both runs record it.
SETTINGS = ('data_dir', 'image_size', 'epochs', 'batch_size', 'seed', 'num_images')
# How to get the Keras side's interpreter, said in one line when there is none.
NO_KERAS_PYTHON = (
    'Keras/TensorFlow Python {problem}: make a venv apart from the project environment '
    '(python3 -m venv VENV && VENV/bin/pip install tensorflow keras pillow), then set '
    'KERAS_PYTHON=VENV/bin/python or pass --keras_python=VENV/bin/python (or --skip=keras).')


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir', help='Required unless --combine.')
  parser.add_argument('--workdir',
                      help='Runs and results go here; our side needs a new one (see main). '
                           'Required unless --combine.')
  parser.add_argument('--models', default=','.join(MODELS))
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--epochs', type=int, default=10)
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--num_images', default='5000,750,750',
                      help='Train, valid and test images drawn (the protocol; smaller to try).')
  parser.add_argument('--tfds_dir', default='',
                      help='Reuse a built TFDS dataset; by default one is built inside workdir, '
                           'so our time includes building it (the cold first run).')
  parser.add_argument('--keras_python', default=os.environ.get('KERAS_PYTHON', ''),
                      help='A Python with tensorflow and keras (never the project environment); '
                           'default: $KERAS_PYTHON.')
  parser.add_argument('--skip', choices=('', 'ours', 'keras'), default='',
                      help='Leave one side out (its results are read from workdir if there).')
  parser.add_argument('--extrapolate_epochs', type=int, default=0,
                      help='Also estimate both sides at this many epochs: measured time plus '
                           'the extra epochs at each side\'s measured cost of a later epoch '
                           '(needs --epochs >= 2). Printed and saved labelled as an estimate.')
  parser.add_argument('--json', default='', help='Also write the comparison to this file.')
  parser.add_argument('--combine', default='',
                      help='Run nothing: sum the --json files of earlier runs of separate '
                           'models (comma-separated) into the whole study.')
  args = parser.parse_args(argv)
  if args.combine:
    return args
  for name in ('data_dir', 'workdir'):
    if not getattr(args, name):
      parser.error(f'--{name} is required (unless --combine).')
  if args.skip != 'keras':
    if not args.keras_python:
      raise SystemExit(NO_KERAS_PYTHON.format(problem='not given'))
    found = shutil.which(args.keras_python)
    if not found:
      raise SystemExit(NO_KERAS_PYTHON.format(problem=f'{args.keras_python!r} not found'))
    args.keras_python = os.path.abspath(found)  # It runs from the repository root.
  return args


def children_cpu_seconds():
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def timed(command, log_path, env=None):
  """Runs a command, each line of its output stamped with the time it came into the log file;
  (wall seconds, CPU seconds, return code)."""
  start, cpu = time.perf_counter(), children_cpu_seconds()
  with open(log_path, 'w', buffering=1) as log, subprocess.Popen(  # Lines: tail -f shows them.
      command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
      text=True) as child:
    for line in child.stdout:  # Text mode: a progress bar's carriage returns end lines too.
      log.write(f'{datetime.datetime.now():%H:%M:%S.%f} {line}')
  return time.perf_counter() - start, children_cpu_seconds() - cpu, child.returncode


def run_ours(args):
  """gender_jax.study on the protocol; its wall time and each model's results.json."""
  study_dir = os.path.join(args.workdir, 'ours')
  command = [
      sys.executable, '-m', 'gender_jax.study', f'--workdir={study_dir}',
      f'--models={args.models}', '--config=configs/default.py',
      f'--config.data_dir={os.path.abspath(args.data_dir)}',
      f"--config.tfds_dir={args.tfds_dir or os.path.join(args.workdir, 'tfds')}",
      f'--config.image_size={args.image_size}', f'--config.num_epochs={args.epochs}',
      f'--config.batch_size={args.batch_size}', f'--config.seed={args.seed}',
      '--config.allow_random_base=True']
  command += [f'--config.num_{split}={n}'
              for split, n in zip(('train', 'valid', 'test'), args.num_images.split(','))]
  env = {**os.environ, 'TQDM_DISABLE': '1', 'PYTHONUNBUFFERED': '1'}  # Lines stamped as made.
  seconds, cpu_seconds, code = timed(command, os.path.join(args.workdir, 'ours.log'), env)
  if code:
    raise SystemExit(f"gender_jax.study failed ({code}); see {args.workdir}/ours.log")
  results = {}
  for model in args.models.split(','):
    with open(os.path.join(study_dir, model, 'results.json')) as f:
      results[model] = json.load(f)
  with open(os.path.join(args.workdir, 'ours.log')) as f:
    epoch_seconds = logged_epoch_seconds(f)
  return {'seconds': seconds, 'cpu_seconds': cpu_seconds, 'command': command,
          'results': results, 'epoch_seconds': epoch_seconds}


def logged_epoch_seconds(log_lines):
  """{model: [wall seconds between consecutive epochs' lines]} from the study's stamped log.

  Unlike metrics.jsonl's epoch_seconds (the training pass), this is an epoch's whole cost:
  training, validation and checkpoints, as Keras's epoch times include validation.
  """
  stamps, model = {}, None
  for line in log_lines:
    point = re.search(r' Point \d+/\d+: (\w+) in ', line)
    epoch = re.match(r'(\d\d:\d\d:\d\d\.\d+) epoch \d+/\d+: train loss', line)
    if point:
      model = point.group(1)
    elif epoch and model:
      stamps.setdefault(model, []).append(
          datetime.datetime.strptime(epoch.group(1), '%H:%M:%S.%f'))
  return {m: [(b - a).total_seconds() % 86400 for a, b in zip(t, t[1:])]
          for m, t in stamps.items()}


def run_keras(args, ours):
  """keras_study.py on the files our first model's run drew, with our configs' learning rates."""
  first = args.models.split(',')[0]
  config = ours['results'][first]['config']
  rates = {m: r['config']['learning_rate'] for m, r in ours['results'].items()}
  out = os.path.join(args.workdir, 'keras.json')
  command = [
      args.keras_python, os.path.join('benchmarks', 'keras_study.py'),
      f"--protocol={os.path.join(args.workdir, 'ours', first, 'protocol')}",
      f"--data_dir={config['data_dir']}", f'--models={args.models}',
      f'--image_size={args.image_size}', f'--epochs={args.epochs}',
      f'--batch_size={args.batch_size}', f'--seed={args.seed}', f'--json={out}',
      f"--learning_rate={rates.get('vgg16', rates.get('vggface', 1e-4))}",
      f"--custom_learning_rate={rates.get('custom', 1e-3)}"]
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'JAX_PLATFORMS')}
  seconds, cpu_seconds, code = timed(command, os.path.join(args.workdir, 'keras.log'), env)
  if code:
    raise SystemExit(f"keras_study.py failed ({code}); see {args.workdir}/keras.log")
  with open(out) as f:
    keras = json.load(f)
  return {'seconds': seconds, 'cpu_seconds': cpu_seconds, 'command': command,
          'info': keras['info'],
          'results': {r['model']: r for r in keras['results']},
          'epoch_seconds': {r['model']: r['epoch_seconds'][1:] for r in keras['results']}}


def extrapolate(rows, ours, keras, epochs, target_epochs):
  """An estimate at target_epochs: each time plus the extra epochs at its later-epoch cost."""
  estimate = []
  for r in (r for r in rows if not r.get('cpu')):  # Epoch costs are wall seconds.
    models = [r['model']] if r['model'] in ours['results'] else list(ours['results'])
    extra = {side: sum((target_epochs - epochs) * sum(s['epoch_seconds'][m]) /
                       len(s['epoch_seconds'][m]) for m in models)
             for side, s in (('ours', ours), ('keras', keras))}
    out = {'model': r['model'], 'ours_seconds': r['ours_seconds'] + extra['ours'],
           'keras_seconds': r['keras_seconds'] + extra['keras']}
    out['speedup'] = out['keras_seconds'] / out['ours_seconds']
    estimate.append(out)
  return estimate


def compare(ours, keras):
  """Per model and for the whole study: seconds, test accuracy, Keras / ours time ratio."""
  rows = []
  for model, ours_result in ours['results'].items():
    theirs = keras['results'][model]
    rows.append({
        'model': model,
        'ours_seconds': ours_result['total_seconds'], 'keras_seconds': theirs['seconds'],
        'speedup': theirs['seconds'] / ours_result['total_seconds'],
        'ours_accuracy': ours_result['metrics']['accuracy'],
        'keras_accuracy': theirs['test_accuracy'],
        'random_base': bool(ours_result['weights'] and ours_result['weights']['random_base'])})
  rows.append({'model': WALL_ROW, 'ours_seconds': ours['seconds'],
               'keras_seconds': keras['seconds'], 'speedup': keras['seconds'] / ours['seconds']})
  if ours.get('cpu_seconds') and keras.get('cpu_seconds'):  # Sides saved before lack them.
    rows.append({'model': CPU_ROW, 'cpu': True,
                 'ours_seconds': ours['cpu_seconds'], 'keras_seconds': keras['cpu_seconds'],
                 'speedup': keras['cpu_seconds'] / ours['cpu_seconds']})
  return rows


def format_rows(rows):
  lines = ['| model | gender_jax s | Keras s | Keras / gender_jax | gender_jax acc | Keras acc |',
           '| --- | --- | --- | --- | --- | --- |']
  for r in rows:
    accuracies = (f"{r['ours_accuracy']:.4f} | {r['keras_accuracy']:.4f}"
                  + (' (random base)' if r['random_base'] else '')
                  if 'ours_accuracy' in r else ' | ')
    lines.append(f"| {r['model']} | {r['ours_seconds']:.1f} | {r['keras_seconds']:.1f} | "
                 f"{r['speedup']:.2f}x | {accuracies} |")
  return '\n'.join(lines)


def load(path):
  """A side saved by an earlier run into the same --workdir (for --skip)."""
  if not os.path.exists(path):
    raise SystemExit(f'--skip needs the skipped side saved by an earlier run: {path} is missing '
                     '(run once without --skip into this --workdir).')
  with open(path) as f:
    return json.load(f)


def combine(paths):
  """Runs of separate models as one: their model rows, their whole-study rows summed."""
  if len(paths) < 2 or len(set(paths)) < len(paths):
    raise SystemExit(f'--combine: give two or more different files, not {",".join(paths)}.')
  parts = {}
  for path in paths:
    try:
      with open(path) as f:
        part = json.load(f)
    except (OSError, ValueError) as e:
      raise SystemExit(f'--combine: cannot read {path}: {e}')
    if not isinstance(part, dict) or not {'args', 'rows'} <= part.keys():
      raise SystemExit(f'--combine: {path} is not a --json file of study_vs_keras.py.')
    parts[path] = part
  (first, base), *others = parts.items()
  for path, part in others:
    for name in SETTINGS:
      if part['args'].get(name) != base['args'].get(name):
        raise SystemExit(f"--combine: {path} has {name}={part['args'].get(name)!r}, {first} "
                         f"{base['args'].get(name)!r}: sum runs of the same settings only.")
  machines = {path: part.get('machine') for path, part in parts.items()}
  recorded = {m for m in machines.values() if m}
  for path, machine in machines.items():
    if not machine:  # Saved before runs recorded it.
      print(f'{path} does not record its machine: make sure it ran on the same one.')
  if len(recorded) > 1:
    raise SystemExit(f'--combine: the runs were made on different machines ({machines}): sum '
                     'runs of one machine only.')
  rows, seen = [], {}
  for path, part in parts.items():
    for row in part['rows']:
      if 'ours_accuracy' not in row:  # A whole-study row: summed below.
        continue
      if row['model'] in seen:
        raise SystemExit(f"--combine: {row['model']} is in both {seen[row['model']]} and "
                         f'{path}: give each model once.')
      seen[row['model']] = path
      rows.append(row)
  runs = sum(part.get('runs', 1) for part in parts.values())  # A combined part counts its own.
  for label, cpu in ((WALL_ROW, False), (CPU_ROW, True)):
    whole = [next((r for r in p['rows'] if 'ours_accuracy' not in r and
                   bool(r.get('cpu')) == cpu), None) for p in parts.values()]
    if all(whole):  # Runs saved before CPU seconds were recorded lack the CPU row.
      ours, keras = (sum(r[f'{side}_seconds'] for r in whole) for side in ('ours', 'keras'))
      rows.append({'model': label.replace('subprocess', f'{runs} runs summed'),
                   'ours_seconds': ours, 'keras_seconds': keras, 'speedup': keras / ours,
                   **({'cpu': True} if cpu else {})})
  return {'args': {name: base['args'].get(name) for name in SETTINGS}, 'combined': list(parts),
          'runs': runs, 'machine': recorded.pop() if recorded else None, 'rows': rows}


def portable(values):
  """values with absolute paths of this machine cut down: relative to the checkout where they lie
  in it, else the last component, so a record names no machine's folders."""
  def cut(value):
    if not isinstance(value, str) or not os.path.isabs(value):
      return value
    inside = os.path.commonpath([REPO, value]) == REPO
    return os.path.relpath(value, REPO) if inside else os.path.basename(value)
  return {name: cut(value) for name, value in values.items()}


def measure(args):
  """Both sides timed (or one read back, --skip) and compared."""
  os.makedirs(args.workdir, exist_ok=True)
  saved = {side: os.path.join(args.workdir, f'{side}_side.json') for side in ('ours', 'keras')}
  skipped = load(saved[args.skip]) if args.skip else None  # Before timing the other side.
  if args.skip == 'ours':
    ours = skipped
  elif os.path.exists(os.path.join(args.workdir, 'ours')):  # The study would skip, not time, it.
    raise SystemExit(f'{args.workdir}/ours holds an earlier run of our side, which '
                     'gender_jax.study would resume instead of timing: remove it, give a new '
                     '--workdir, or pass --skip=ours.')
  else:
    ours = run_ours(args)
    with open(saved['ours'], 'w') as f:
      json.dump(ours, f, indent=1)
  print(f"gender_jax study: {ours['seconds']:.1f} s", flush=True)
  if args.skip == 'keras':
    keras = skipped
  else:
    keras = run_keras(args, ours)
    with open(saved['keras'], 'w') as f:
      json.dump(keras, f, indent=1)
  print(f"Keras study: {keras['seconds']:.1f} s", flush=True)
  rows = compare(ours, keras)
  print(format_rows(rows))
  out = {'args': portable(vars(args)), 'machine': f'{cpu_model()}, {os.cpu_count()} CPUs',
         'keras_info': keras['info'], 'rows': rows,
         'epoch_seconds': {'ours': ours['epoch_seconds'], 'keras': keras['epoch_seconds']}}
  if args.extrapolate_epochs:
    out['estimate'] = extrapolate(rows, ours, keras, args.epochs, args.extrapolate_epochs)
    print(f'\nESTIMATE (not measured) at {args.extrapolate_epochs} epochs:')
    print(format_rows(out['estimate']))
  return out


def main(argv=None):
  args = parse_args(argv)
  if args.combine:
    out = combine(args.combine.split(','))
    print(f"{out['runs']} runs on {out['machine'] or 'a machine not recorded'}: {out['args']}")
    print(format_rows(out['rows']))
  else:
    out = measure(args)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(out, f, indent=1)
  return out


if __name__ == '__main__':
  main()
