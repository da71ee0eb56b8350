"""Winograd F(2x2, 3x3) convolutions: the same function as XLA's direct ones, used where they time
faster on the machine at hand."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gender_jax.models import networks
from gender_jax.models import winograd


def direct_conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      precision='highest')


@pytest.mark.parametrize('height,width', [(8, 8), (9, 12), (7, 5), (1, 2)])
def test_conv3x3_equals_the_direct_same_convolution(height, width):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, height, width, 5)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 5, 7)), jnp.float32)
  got = winograd.conv3x3(x, kernel, (1, 1), 'SAME')
  want = direct_conv(x, kernel)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(jnp.abs(want).max()))


def test_conv3x3_has_the_direct_convolutions_gradients():
  """A base that is trained rather than frozen differentiates through the Winograd layers."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 6, 10, 3)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
  loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k)))
  got = jax.grad(loss(lambda x, k: winograd.conv3x3(x, k, (1, 1), 'SAME')), (0, 1))(x, kernel)
  want = jax.grad(loss(direct_conv), (0, 1))(x, kernel)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * float(jnp.abs(w).max()))


@pytest.mark.parametrize('strides,padding', [((2, 2), 'SAME'), ((1, 1), 'VALID')])
def test_conv3x3_refuses_what_it_does_not_compute(strides, padding):
  x, kernel = jnp.zeros((1, 8, 8, 2)), jnp.zeros((3, 3, 2, 4))
  with pytest.raises(ValueError, match='stride 1, SAME padding'):
    winograd.conv3x3(x, kernel, strides, padding)


@pytest.fixture
def timings(monkeypatch, tmp_path):
  """A fresh cache folder and process memory for the convolution timings; `fake(winograd_ms)`
  makes every layer time as the direct one's 10 ms against `winograd_ms`, counting the calls."""
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  monkeypatch.setattr(winograd, '_timings', {})
  calls = []

  def fake(winograd_ms):
    def time_layer(*layer):
      calls.append(layer)
      return {'direct_ms': 10.0, 'winograd_ms': winograd_ms}
    monkeypatch.setattr(winograd, 'time_layer', time_layer)
    return calls
  return fake


def test_pays_off_times_a_layer_once_per_machine_and_keeps_the_times(timings, monkeypatch):
  calls = timings(winograd_ms=7.0)
  assert winograd.pays_off(56, 56, 128, 256) and winograd.pays_off(56, 56, 128, 256)
  assert calls == [(56, 56, 128, 256)]
  kept = json.loads(pathlib.Path(winograd.timings_path()).read_text())
  assert kept == {winograd.machine(): {'56x56x128->256': {'direct_ms': 10.0, 'winograd_ms': 7.0}}}
  monkeypatch.setattr(winograd, '_timings', {})  # A later process reads them from the file.
  assert winograd.pays_off(56, 56, 128, 256) and len(calls) == 1
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_enable_fast_math=true')  # Another library setting.
  assert winograd.pays_off(56, 56, 128, 256) and len(calls) == 2
  assert len(json.loads(pathlib.Path(winograd.timings_path()).read_text())) == 2


def test_a_damaged_timings_file_is_timed_again_and_replaced(timings):
  calls = timings(winograd_ms=7.0)
  path = pathlib.Path(winograd.timings_path())
  path.parent.mkdir(parents=True)
  path.write_text('{"half a file')
  assert winograd.pays_off(28, 28, 256, 512) and len(calls) == 1
  assert list(json.loads(path.read_text())[winograd.machine()]) == ['28x28x256->512']


def test_pays_off_keeps_the_direct_convolution_where_winograd_times_slower(timings):
  timings(winograd_ms=12.0)
  assert not winograd.pays_off(28, 28, 512, 512)


def test_pays_off_leaves_narrow_layers_and_small_maps_direct_without_timing_them(timings):
  calls = timings(winograd_ms=1.0)
  assert not any(winograd.pays_off(*layer) for layer in
                 [(224, 224, 3, 64), (224, 224, 64, 64), (14, 14, 512, 512), (27, 40, 256, 512)])
  assert not calls


def test_pays_off_keeps_every_layer_direct_in_a_run_of_several_processes(timings, monkeypatch):
  calls = timings(winograd_ms=1.0)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  assert not winograd.pays_off(56, 56, 128, 256) and not calls


def test_pays_off_times_once_per_process_where_the_cache_cannot_be_written(timings, monkeypatch,
                                                                           tmp_path):
  (tmp_path / 'a_file').write_text('')
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'a_file'))
  calls = timings(winograd_ms=7.0)
  assert winograd.pays_off(28, 28, 256, 512) and winograd.pays_off(28, 28, 256, 512)
  assert len(calls) == 1


@pytest.mark.usefixtures('timings')  # A fresh cache; `time_layer` stays the real one.
def test_layers_are_timed_for_real_while_the_model_is_traced():
  """The first jit of VGG16 at 56 px times its two 28 px layers of block 2 on this machine."""
  images = jnp.asarray(np.random.default_rng(3).uniform(-120, 130, (2, 56, 56, 3)), jnp.float32)
  params = networks.VGG16Base(winograd=False).init(jax.random.key(0), images[:1])
  features = jax.jit(networks.VGG16Base(winograd=True).apply)(params, images)
  kept = json.loads(pathlib.Path(winograd.timings_path()).read_text())[winograd.machine()]
  assert sorted(kept) == ['28x28x128->128', '28x28x64->128']
  assert all(times['direct_ms'] > 0 and times['winograd_ms'] > 0 for times in kept.values())
  direct = jax.jit(networks.VGG16Base(winograd=False).apply)(params, images)
  assert float(jnp.abs(features - direct).max()) < 1e-5 * float(jnp.abs(direct).max())


def _direct_convolutions(base, size):
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  params = jax.eval_shape(base.init, jax.random.key(0), images)
  jaxpr = jax.make_jaxpr(base.apply)(params, images)
  return str(jaxpr).count('conv_general_dilated')


def test_vgg16_base_takes_winograd_on_cpu_where_it_times_faster(timings):
  timings(winograd_ms=7.0)
  assert _direct_convolutions(networks.VGG16Base(), 224) == 5  # Blocks 2-4 (112-28 px) by Winograd.
  assert _direct_convolutions(networks.VGG16Base(), 112) == 8  # Blocks 2-3 (56-28 px).
  assert _direct_convolutions(networks.VGG16Base(winograd=False), 224) == 13
  assert _direct_convolutions(networks.VGG16Base(dtype=jnp.bfloat16), 224) == 13  # float32 only.


def test_vgg16_base_stays_direct_on_a_cpu_where_winograd_times_slower(timings):
  timings(winograd_ms=12.0)
  assert _direct_convolutions(networks.VGG16Base(), 224) == 13


def test_vgg16_base_gives_the_same_features_with_and_without_winograd(timings):
  timings(winograd_ms=7.0)
  images = jnp.asarray(np.random.default_rng(1).uniform(-120, 130, (2, 112, 112, 3)), jnp.float32)
  params = networks.VGG16Base().init(jax.random.key(0), images[:1])
  fast = jax.jit(networks.VGG16Base(winograd=True).apply)(params, images)
  direct = jax.jit(networks.VGG16Base(winograd=False).apply)(params, images)
  assert _direct_convolutions(networks.VGG16Base(winograd=True), 112) == 8
  assert float(jnp.abs(fast - direct).max()) < 1e-5 * float(jnp.abs(direct).max())
