"""Grad-CAM: where in a face the evidence for the model's prediction lies.

Grad-CAM (Selvaraju et al., 2017) weights each channel of the base's last feature map by the
spatial mean of the predicted class's score gradient, sums the weighted channels and keeps the
positive part. The channel weights are global, so the map's localisation comes from where the
feature channels fire, at the resolution of the feature map (5x5 for the custom model at 80 px).
"""
import functools

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np


@functools.cache  # Compiled once per model.
def _jit_grad_cam(model):
  """The jitted (variables, uint8 images) -> (N, H, W) maps of `model`, not yet scaled."""

  def grad_cam_batch(variables, images):
    features = model.apply(variables, images, method=model.encode)
    if features.ndim != 4:
      raise ValueError(
          f'Grad-CAM needs a spatial feature map (N, h, w, C) from the base, but encode returned '
          f'shape {features.shape}: the base pools its features away.')
    features = features.astype(jnp.float32)
    logits, vjp = jax.vjp(
        lambda a: model.apply(variables, a, method=model.classify), features)
    # The predicted class's score: the logit for male, -logit for female.
    (grads,) = vjp(jnp.where(logits >= 0, 1.0, -1.0).astype(logits.dtype))
    weights = grads.mean(axis=(1, 2))
    cam = jax.nn.relu(jnp.einsum('nhwc,nc->nhw', features, weights))
    return jax.image.resize(cam, (cam.shape[0], *images.shape[1:3]), 'bilinear')

  return jax.jit(grad_cam_batch)


def _scaled_to_peak_1(cams):
  """Each non-zero map divided by its maximum, on the host: inside the jitted function XLA
  may compute the map twice, for the maximum and for the division, rounding each its own way
  (on an AVX2 CPU a peak came out 0.99999994). After upsampling, since bilinear samples rarely
  land on a feature cell's centre; the resize is linear, so this is the map normalised first,
  up to a scale."""
  peak = cams.max(axis=(1, 2), keepdims=True)
  return cams / np.where(peak > 0, peak, 1.0).astype(cams.dtype)


def grad_cam(model, variables, images, batch_size=64):
  """Grad-CAM maps in [0, 1] of uint8 RGB images at the model's size, (N, S, S, 3) -> (N, S, S).

  Each map is for the image's predicted class and scaled to a maximum of 1 (all zero where no
  channel speaks for the prediction).
  """
  fn = _jit_grad_cam(model)
  maps = [_scaled_to_peak_1(np.asarray(fn(variables, images[i:i + batch_size])))
          for i in range(0, len(images), batch_size)]
  return np.concatenate(maps) if maps else np.zeros((0, *np.shape(images)[1:3]), np.float32)


def overlay(image, cam, alpha=0.5):
  """A uint8 RGB image (S, S, 3) blended with the 'jet' colours of its map (S, S) in [0, 1]."""
  image = np.asarray(image)
  cam = np.asarray(cam, np.float32)
  if cam.shape != image.shape[:2]:
    raise ValueError(f'The map {cam.shape} does not match the image {image.shape[:2]}.')
  heat = matplotlib.colormaps['jet'](np.clip(cam, 0.0, 1.0))[..., :3] * 255.0
  blended = (1.0 - alpha) * image.astype(np.float32) + alpha * heat
  return np.round(blended).clip(0, 255).astype(np.uint8)
