"""Training and evaluation: a dense head on a frozen (or from-scratch) base, data parallel.

Read top to bottom: the optimizer with frozen parts and the train state, the jitted training step
over a device mesh (gender_jax/sharded.py evaluates), frozen-base features, then the run: its
checks, the epoch loop and the final test evaluation. The model, its initial variables and the
pretrained weights come from networks.py and pretrained.py.
"""
import dataclasses
import functools
import os
import shlex
import sys
import time
from typing import Any

from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from gender_jax.analysis import metrics as metrics_lib
from gender_jax import config_check
from gender_jax.data import augment
from gender_jax.data import batching
from gender_jax.data import feature_cache
from gender_jax.data import protocol
from gender_jax.models import networks
from gender_jax.models import pretrained
from gender_jax.training import checkpoints
from gender_jax.training import run_dir
from gender_jax.training import sharded
from gender_jax import UserError


class NonFiniteLossError(UserError, RuntimeError):
  """Training diverged; the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------
# Optimizer (frozen parts get zero updates through an optax mask) and train state.
# ---------------------------------------------------------------------------------------------
def trainable_labels(params, config):
  """Labels each param leaf 'train', 'finetune' or 'frozen' (a pytree like params)."""
  def label(path, _):
    part, layer = path[0].key, path[1].key
    if part == 'head' or not networks.REGISTRY[config.model].pretrained:
      return 'train'
    return 'finetune' if layer.split('_')[0] in config.finetune_blocks else 'frozen'
  return jax.tree_util.tree_map_with_path(label, params)


def base_is_frozen(config):
  return networks.REGISTRY[config.model].pretrained and not config.finetune_blocks


def create_learning_rate_fn(config, base_rate, steps_per_epoch):
  """Constant or cosine decay, with an optional linear warmup."""
  total = config.num_epochs * steps_per_epoch
  warmup = config.warmup_epochs * steps_per_epoch
  if config.lr_schedule == 'cosine':
    decay = optax.cosine_decay_schedule(base_rate, max(total - warmup, 1))
  elif config.lr_schedule == 'constant':
    decay = optax.constant_schedule(base_rate)
  else:
    raise ValueError(f"Unknown lr_schedule {config.lr_schedule!r}: 'constant' or 'cosine'.")
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, base_rate, warmup), decay], [warmup])


def create_optimizer(config, params, steps_per_epoch):
  def make(rate):
    schedule = create_learning_rate_fn(config, rate, steps_per_epoch)
    if config.optimizer == 'adam':
      return optax.adamw(schedule, weight_decay=config.weight_decay)
    if config.optimizer == 'sgd':
      return optax.sgd(schedule, momentum=0.9)
    raise ValueError(f"Unknown optimizer {config.optimizer!r}: 'adam' or 'sgd'.")
  return optax.multi_transform(
      {'train': make(config.learning_rate), 'finetune': make(config.finetune_learning_rate),
       'frozen': optax.set_to_zero()},
      trainable_labels(params, config))


class TrainState(train_state.TrainState):
  batch_stats: Any  # BatchNorm's running statistics; {} for a model without BatchNorm.
  dropout_rng: jax.Array

  @property
  def variables(self):
    """What `apply` takes and the best checkpoint holds: params, and batch_stats if any."""
    return {'params': self.params, **({'batch_stats': self.batch_stats} if self.batch_stats
                                      else {})}


def create_train_state(config, model, rng, steps_per_epoch, base_params=None):
  """A TrainState with initial (or converted) params and the masked optimizer."""
  init_rng, dropout_rng = jax.random.split(rng)
  variables = networks.initial_variables(model, config, init_rng, base_params)
  params = variables['params']
  return TrainState.create(apply_fn=model.apply, params=params,
                           batch_stats=variables.get('batch_stats', {}), dropout_rng=dropout_rng,
                           tx=create_optimizer(config, params, steps_per_epoch))


def count_params(params, labels=None):
  """Number of parameters, all or (given labels) those that train."""
  sizes = jax.tree.leaves(jax.tree.map(np.size, params))
  if labels is None:
    return int(sum(sizes))
  return int(sum(s for s, l in zip(sizes, jax.tree.leaves(labels)) if l != 'frozen'))


# ---------------------------------------------------------------------------------------------
# Steps. One jit over a mesh with a 'batch' axis: the batch is sharded, params replicated, and
# the mean loss over the global batch makes XLA all-reduce (average) the gradients.
# ---------------------------------------------------------------------------------------------
def binary_cross_entropy(logits, labels):
  return optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))


def train_step(state, batch, *, stop_base_gradient, jitter=augment.Jitter()):
  """One optimizer step; returns the new state and the batch's summed loss and hits.

  A batch of stored images comes with its 'augment' draws, and is augmented here, on the devices.

  BatchNorm normalises with the mean over the global batch (jit sees one array), so its
  statistics, like the gradients, do not depend on the number of devices.
  """
  dropout_rng = jax.random.fold_in(state.dropout_rng, state.step)
  if 'augment' in batch:
    batch = {'image': augment.apply(batch['image'], batch['augment'], jitter),
             'label': batch['label']}

  def loss_fn(params):
    logits, batch_stats = sharded.forward(
        {**state.variables, 'params': params}, state.apply_fn, batch, train=True,
        rngs={'dropout': dropout_rng}, stop_base_gradient=stop_base_gradient)
    losses = binary_cross_entropy(logits, batch['label'])
    return losses.mean(), (losses, logits, batch_stats)

  grads, (losses, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  hits = (logits >= 0) == (batch['label'] == 1)
  sums = {'loss': losses.sum(), 'correct': hits.sum(), 'count': jnp.float32(losses.shape[0])}
  return state.apply_gradients(grads=grads).replace(batch_stats=batch_stats), sums


def step_batch(batch):
  """What the training step takes of one of augment.train_batches' batches of images."""
  return {k: batch[k] for k in ('image', 'augment', 'label')}


def jit_train_step(mesh, stop_base_gradient, jitter=augment.Jitter()):
  return jax.jit(functools.partial(train_step, stop_base_gradient=stop_base_gradient,
                                   jitter=jitter),
                 in_shardings=(mesh.replicated, mesh.data),
                 out_shardings=(mesh.replicated, mesh.replicated), donate_argnums=0)


# The host prepares the next batches while the devices compute, this many steps ahead and no
# further: unbounded, JAX's asynchronous dispatch let the input on CPU run 30-85% of an epoch's
# steps ahead, holding every queued batch (memory growing with the dataset), and the bar ended
# long before the epoch (benchmarks/RESULTS.md#steps-in-flight).
STEPS_IN_FLIGHT = 2


def train_epoch(step, state, batches, bar, steps_in_flight=STEPS_IN_FLIGHT):
  """step over every (sharded) batch; the new state and the epoch's summed loss, hits and count.

  After each dispatch it waits for the step steps_in_flight behind it (None: never), so the bar
  counts steps done.
  """
  sums = []
  for batch in batches:
    state, batch_sums = step(state, batch)
    sums.append(batch_sums)
    if steps_in_flight is not None and len(sums) > steps_in_flight:
      jax.block_until_ready(sums[-steps_in_flight - 1])
      bar.update()
  totals = jax.tree.map(lambda *x: float(np.sum(x)), *jax.device_get(sums))
  bar.update(len(sums) - bar.n)
  return state, totals


def validate_epoch(mesh, apply_fn, variables, valid_split, batch_size, features=None):
  """{'valid_loss', 'valid_accuracy'} of variables on the valid split (its cached base features
  if given)."""
  logits = sharded.predict_logits(mesh, apply_fn, variables, valid_split, batch_size,
                                  features=features)
  valid = metrics_lib.classification_metrics(valid_split.labels, logits)
  return {'valid_loss': valid['loss'], 'valid_accuracy': valid['accuracy']}


def epoch_values(totals, valid, learning_rate, epoch_seconds):
  """An epoch's line of metrics.jsonl (and TensorBoard scalars), from its training sums and
  validate_epoch's values."""
  return {'train_loss': totals['loss'] / totals['count'],
          'train_accuracy': totals['correct'] / totals['count'], **valid,
          'learning_rate': learning_rate, 'epoch_seconds': epoch_seconds,
          'train_images_per_second': totals['count'] / epoch_seconds}


# ---------------------------------------------------------------------------------------------
# A frozen base runs once per image (and mirror image); the head trains on its features.
# ---------------------------------------------------------------------------------------------
def frozen_base_features(mesh, model, variables, splits, config, weights_meta):
  """{split: features} of the frozen base, from (and into) the dataset's shared feature cache."""
  base = {collection: tree['base'] for collection, tree in variables.items() if 'base' in tree}
  key = feature_cache.fingerprint(base, model=config.model, dtype=config.compute_dtype,
                                  preprocessing=weights_meta['preprocessing'],
                                  **networks.encode_settings(config))
  encode = lambda split, flip: sharded.extract_features(
      mesh, model.apply, variables, split, config.eval_batch_size, flip=flip,
      desc=f'features {split.name}{" (flipped)" if flip else ""}')
  return feature_cache.cached_features(splits, key, config.augment_flip, encode)


# ---------------------------------------------------------------------------------------------
# The whole run.
# ---------------------------------------------------------------------------------------------
def say(line):
  """A line of the run's output (process 0), above any progress bar rather than through it."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(line)


def recorded_config(config, face_input):
  """The run's config as it runs and is recorded: its folders absolute, and the face template its
  training faces gave where the config left it empty (the caller's config is left as it is)."""
  config = run_dir.with_absolute_paths(config.copy_and_resolve_references())
  config.face_template = face_input.template
  return config


def resolved_train_seed(config):
  """The seed of initialisation, order and jitter: train_seed, or the protocol's seed if -1."""
  return config.seed if config.train_seed == -1 else config.train_seed


def describe_devices(mesh):
  return f'{mesh.size} x {jax.devices()[0].device_kind}'


@dataclasses.dataclass(frozen=True)
class RunContext:
  """What a checked run trains with, and the facts of its session that its results record."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: sharded.Mesh
  base_params: Any  # The converted base's params; None for the custom model.
  weights_meta: dict | None
  command: str
  commit: str | None  # At the session's start: the code may change while a long run trains.
  session_start: float  # time.time() when this session started.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       command: str | None = None) -> dict[str, Any]:
  """Trains, checkpoints and evaluates; resumes from workdir. Returns the results dict.

  The run directory holds one experiment: a rerun with a config that would change its results
  is refused, a finished run is left as it is, and one process trains there at a time.
  """
  session_start = time.time()
  commit = run_dir.git_commit()  # Now: the code may change while a long run trains.
  command = command or shlex.join([os.path.basename(sys.executable), *sys.argv])
  mesh = sharded.Mesh.create()
  config_check.check(config, mesh.size)
  with run_dir.lock(workdir, command):
    # Weights first: a missing folder fails before any data is read.
    base_params, weights_meta = pretrained.load_base(config)
    run_dir.check_experiment(workdir, config, weights_meta)
    finished = run_dir.finished_results(workdir, config)
    if finished:
      say(f'{workdir} has finished its {config.num_epochs} epochs; its results are in '
          f'{run_dir.path(workdir, run_dir.RESULTS)}.')
      return finished
    say(f'{config.model} into {workdir}: {describe_devices(mesh)} '
        f'({jax.process_count()} process{"es" if jax.process_count() > 1 else ""})')
    return _train_and_evaluate(RunContext(config, workdir, mesh, base_params, weights_meta,
                                          command, commit, session_start))


def _train_and_evaluate(run):
  """train_and_evaluate, in its run directory's lock, once the experiment is checked."""
  config, workdir, mesh, weights_meta = run.config, run.workdir, run.mesh, run.weights_meta
  # Input.
  loaded = protocol.load_splits(config, workdir=workdir)
  splits, config = loaded.splits, recorded_config(config, loaded.face_input)
  train_split = splits['train']
  steps_per_epoch = batching.num_train_steps(train_split, config.batch_size)

  # Model, state.
  model = networks.create_model(
      config, weights_meta['preprocessing'] if weights_meta else None)
  train_seed = resolved_train_seed(config)
  state = create_train_state(config, model, jax.random.PRNGKey(train_seed), steps_per_epoch,
                             run.base_params)
  labels = trainable_labels(state.params, config)
  param_counts = {'trainable': count_params(state.params, labels),
                  'total': count_params(state.params)}
  say(f"Parameters: {param_counts['trainable']:,} trained of {param_counts['total']:,}")

  # Resume, before writing anything: a refused resume leaves the run's saved config as it was.
  run_checkpoints = checkpoints.Checkpoints(workdir)
  state, progress = run_checkpoints.restore_latest(state, mesh.replicated)
  run_dir.write_json(run_dir.path(workdir, run_dir.CONFIG), config.to_dict())
  run_dir.write_json(run_dir.path(workdir, run_dir.WEIGHTS_METADATA), weights_meta)
  progress = progress or {'epoch': 0, 'best_valid_accuracy': -1.0, 'best_epoch': 0,
                          'train_seconds': 0.0}
  if progress['epoch']:
    say(f"Resuming after epoch {progress['epoch']} from {workdir}.")
  # Seconds of the sessions before this one (runs saved before it was kept: their training).
  earlier_seconds = progress.get('total_seconds', progress['train_seconds'])
  state = jax.device_put(state, mesh.replicated)

  # Features of a frozen base, computed once.
  use_cache = config.cache_features and base_is_frozen(config)
  feature_start = time.time()
  features = (frozen_base_features(mesh, model, state.variables, splits, config, weights_meta)
              if use_cache else None)
  feature_seconds = time.time() - feature_start

  jitter = augment.Jitter.from_config(config)
  step = jit_train_step(mesh, stop_base_gradient=base_is_frozen(config), jitter=jitter)
  learning_rate = create_learning_rate_fn(config, config.learning_rate, steps_per_epoch)
  writer = run_dir.MetricsWriter(workdir, progress['epoch'])
  for epoch in range(progress['epoch'] + 1, config.num_epochs + 1):
    epoch_start = time.time()
    batches = augment.train_batches(
        train_split, config.batch_size, seed=train_seed, epoch=epoch, flip=config.augment_flip,
        shift=config.augment_shift, jitter=jitter, with_images=not use_cache)
    batches = (mesh.shard_batch(feature_cache.feature_batch(batch, features) if use_cache else
                                step_batch(batch))
               for batch in batches)
    with tqdm.tqdm(total=steps_per_epoch, desc=f'epoch {epoch}/{config.num_epochs}',
                   disable=jax.process_index() != 0) as bar:
      state, totals = train_epoch(step, state, batches, bar)
    train_loss = totals['loss'] / totals['count']
    if not np.isfinite(train_loss):
      raise NonFiniteLossError(
          f'Training loss became {train_loss} in epoch {epoch}; the last good checkpoint '
          f'(epoch {progress["epoch"]}) is kept in {workdir}. Lower learning_rate?')
    epoch_seconds = time.time() - epoch_start

    valid = validate_epoch(mesh, model.apply, state.variables, splits['valid'],
                           config.eval_batch_size, features['valid'] if use_cache else None)
    values = epoch_values(totals, valid, float(learning_rate(int(state.step) - 1)),
                          epoch_seconds)
    writer.write(epoch, values)
    say(f"epoch {epoch}/{config.num_epochs}: train loss {values['train_loss']:.4f} accuracy "
        f"{values['train_accuracy']:.4f} | valid loss {values['valid_loss']:.4f} accuracy "
        f"{values['valid_accuracy']:.4f} | {values['train_images_per_second']:.0f} img/s, "
        f"{epoch_seconds:.0f} s")

    progress = {**progress, 'epoch': epoch,
                'train_seconds': progress['train_seconds'] + epoch_seconds,
                'total_seconds': earlier_seconds + time.time() - run.session_start}
    if values['valid_accuracy'] > progress['best_valid_accuracy']:
      progress.update(best_valid_accuracy=values['valid_accuracy'], best_epoch=epoch)
      run_checkpoints.save_best(epoch, state.variables, progress)
    run_checkpoints.save_latest(epoch, state, progress)
  writer.close()

  # The best checkpoint on the test split.
  best = run_checkpoints.restore_best(state.variables, mesh.replicated)
  logits = {split: sharded.predict_logits(
      mesh, model.apply, best, splits[split], config.eval_batch_size,
      features=features[split] if use_cache else None, desc=split)
            for split in ('valid', 'test')}  # Valid: what calibration is fitted on.
  results = run_dir.results_record(
      config=config,
      metrics=metrics_lib.classification_metrics(splits['test'].labels, logits['test']),
      best_epoch=progress['best_epoch'], epochs_trained=progress['epoch'],
      train_seconds=progress['train_seconds'], feature_seconds=feature_seconds,
      total_seconds=earlier_seconds + time.time() - run.session_start,
      images_trained=progress['epoch'] * steps_per_epoch * config.batch_size,
      params=param_counts, weights_metadata=weights_meta, git_commit=run.commit,
      devices=describe_devices(mesh), command=run.command)
  run_dir.write_results(workdir, results)
  for split, split_logits in logits.items():
    run_dir.write_predictions(workdir, split, splits[split].paths, splits[split].labels,
                              metrics_lib.sigmoid(split_logits))
  test = results['metrics']
  say(f"test (best epoch {progress['best_epoch']}): accuracy {test['accuracy']:.4f}, balanced "
      f"accuracy {test['balanced_accuracy']:.4f}, ROC AUC {test['roc_auc']:.4f}; results in "
      f"{run_dir.path(workdir, run_dir.RESULTS)}")
  return results
