"""The evaluation path's dispatch: bounded pieces on CPU, nothing computed for padding alone."""
from unittest import mock

import jax
import numpy as np

from gender_jax.data import batching
from gender_jax.training import sharded


def test_dispatch_rows_keeps_each_cpu_devices_images_within_the_pixel_bound():
  four = sharded.Mesh.create()  # conftest: 4 fake CPU devices.
  one = sharded.Mesh.create(jax.devices()[:1])
  vgg_224 = {'image': np.zeros((256, 224, 224, 3), np.uint8)}
  assert sharded.CPU_PIXELS_PER_DISPATCH // (224 * 224) == 8
  assert sharded.dispatch_rows(one, vgg_224) == 8
  assert sharded.dispatch_rows(four, vgg_224) == 4 * 8
  # A divisor of each device's share, so every piece has one shape: 50 a device -> 5.
  assert sharded.dispatch_rows(four, {'image': np.zeros((200, 224, 224, 3), np.uint8)}) == 20
  # Cached base features and small images are dispatched whole.
  assert sharded.dispatch_rows(four, {'features': np.zeros((256, 7, 7, 512))}) == 256
  assert sharded.dispatch_rows(four, {'image': np.zeros((256, 48, 48, 3), np.uint8)}) == 256


def ten_images():
  """Ten distinct 8x8 uint8 images and a split of them."""
  images = np.arange(10 * 8 * 8 * 3).reshape(10, 8, 8, 3).astype(np.uint8)
  return images, batching.Split('valid', images, np.zeros(10, np.int32), paths=[],
                                      source_dir='')


def test_map_split_computes_pieces_in_order_and_skips_padding_alone():
  images, split = ten_images()
  mesh = sharded.Mesh.create()
  shapes = []

  def fn(batch):
    shapes.append(batch['image'].shape)
    return jax.numpy.sum(batch['image'].astype(np.int32), axis=(1, 2, 3))

  with mock.patch.object(sharded, 'CPU_PIXELS_PER_DISPATCH', 8 * 8):  # 1 image a device.
    out = sharded.map_split(mesh, fn, split, 8, lambda batch: {'image': batch['image']})
  np.testing.assert_array_equal(out, images.astype(np.int32).sum(axis=(1, 2, 3)))
  # Batches of 8 in pieces of 4 (one per device); rows 12-15 of the second batch are padding.
  assert shapes == [(4, 8, 8, 3)] * 3


def test_map_split_fetches_each_result_pieces_in_flight_after_its_dispatch():
  images, split = ten_images()
  mesh = sharded.Mesh.create()
  events = []
  gather = sharded.Mesh.gather

  def fn(batch):
    events.append('dispatch')
    return jax.numpy.sum(batch['image'].astype(np.int32), axis=(1, 2, 3))

  def recorded_gather(self, array):
    events.append('fetch')
    return gather(self, array)

  with mock.patch.object(sharded, 'CPU_PIXELS_PER_DISPATCH', 8 * 8), \
       mock.patch.object(sharded, 'PIECES_IN_FLIGHT', 1), \
       mock.patch.object(sharded.Mesh, 'gather', recorded_gather):
    out = sharded.map_split(mesh, fn, split, 8, lambda batch: {'image': batch['image']})
  np.testing.assert_array_equal(out, images.astype(np.int32).sum(axis=(1, 2, 3)))
  # Three pieces; each fetched (its result and its mask) once one more is dispatched, the last
  # after the loop: at most PIECES_IN_FLIGHT + 1 results are ever waiting on the devices.
  fetch = ['fetch', 'fetch']
  assert events == ['dispatch', 'dispatch', *fetch, 'dispatch', *fetch, *fetch]


def test_extract_features_leave_the_devices_as_float32():
  images, split = ten_images()
  mesh = sharded.Mesh.create()
  bfloat16_base = lambda variables, images, method: images.astype(jax.numpy.bfloat16) * 2
  batch = mesh.shard_batch({'image': images[:8]})['image']
  on_devices = sharded.jit_encode(mesh, bfloat16_base)({}, batch)
  assert on_devices.dtype == np.float32  # Cast before the transfer, not on the host.
  out = sharded.extract_features(mesh, bfloat16_base, {}, split, 8)
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, (images.astype(jax.numpy.bfloat16) * 2).astype(np.float32))


def test_predict_images_batches_a_few_photos_without_a_batch_of_padding():
  seen = []
  with mock.patch.object(sharded, 'predict_logits',
                         lambda *args: seen.append(args[-1]) or np.zeros(3)):
    sharded.predict_images(mock.Mock(), None, np.zeros((3, 8, 8, 3), np.uint8), batch_size=256)
    sharded.predict_images(mock.Mock(), None, np.zeros((300, 8, 8, 3), np.uint8), batch_size=256)
  assert seen == [4, 256]  # 3 photos on 4 devices: one row each; many: the batch asked for.
