"""A trained model from its run directory alone: config, weights metadata and best checkpoint."""
import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gender_jax.analysis import metrics
from gender_jax import base_config
from gender_jax.models import networks
from gender_jax.training import checkpoints
from gender_jax.training import run_dir
from gender_jax.training import sharded


@dataclasses.dataclass
class Trained:
  model: nn.Module
  variables: Any  # {'params': ...} and, for a BatchNorm base, {'batch_stats': ...}.
  config: ml_collections.ConfigDict
  metadata: dict | None  # The converted weights' metadata; None for the custom model.
  epoch: int  # The epoch of the best checkpoint.


def load_trained(workdir):
  """Restores the best checkpoint of a run; needs neither the data nor the weights folder."""
  config_path = run_dir.path(workdir, run_dir.CONFIG)
  results_path = run_dir.path(workdir, run_dir.RESULTS)
  if os.path.exists(config_path):
    recorded = run_dir.read_json(config_path)
  elif os.path.exists(results_path):  # A finished run records its config in its results too.
    recorded = run_dir.read_json(results_path)['config']
  else:
    raise run_dir.NoRunError(
        f'{workdir} holds no trained run ({run_dir.CONFIG} is missing); train one with: '
        f'python -m gender_jax.main --config=configs/custom.py --workdir={workdir}')
  # Over the defaults: fields added since the run was saved take their default values.
  config = base_config.get_config()
  config.update(recorded)
  metadata = run_dir.read_json(run_dir.path(workdir, run_dir.WEIGHTS_METADATA))
  model = networks.create_model(config, metadata and metadata['preprocessing'])
  dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.uint8)
  variables, epoch = checkpoints.best_variables(
      workdir, jax.eval_shape(model.init, jax.random.PRNGKey(0), dummy))
  return Trained(model, variables, config, metadata, epoch)


def predict_logits(trained, images, batch_size=256):
  """Male logits of uint8 RGB images already at the model's size, (N, S, S, 3) -> (N,)."""
  return sharded.predict_images(trained.model, trained.variables, images, batch_size)


def predict_proba(trained, images, batch_size=256):
  """P(male) of uint8 RGB images already at the model's size."""
  return metrics.sigmoid(predict_logits(trained, images, batch_size))
