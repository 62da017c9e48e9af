"""analysis/update_probes.py against exact answers on tiny cases, and the
probes switched on from the config in a short training run."""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import noise_scale as ns  # Also up.noise_scale.
from analysis import probes
from analysis import update_probes as up

jax.config.update('jax_numpy_rank_promotion', 'raise')

# A quadratic 0.5 sum_i a_i w_i^2 over two layers: H = diag(a), known.
A = {'l1': {'kernel': jnp.array([[1., 2.], [3., 4.]])},
     'l2': {'bias': jnp.array([5., 6., 7.])}}
PARAMS = jax.tree.map(lambda a: jnp.ones_like(a) * 0.5, A)
U = {'l1': {'kernel': jnp.array([[1., -1.], [2., 0.]])},
     'l2': {'bias': jnp.array([0., 3., -1.])}}


def _quadratic(params, a):
  return 0.5 * sum(jnp.sum(x * w ** 2) for x, w in
                   zip(jax.tree.leaves(a), jax.tree.leaves(params)))


def _state(params=PARAMS, step=0):
  return types.SimpleNamespace(params=params, step=step, model_state={})


def test_update_sharpness_is_the_rayleigh_quotient_of_the_update():
  probe = up.UpdateSharpnessProbe(1, batches=[A], loss_fn=_quadratic,
                                  update_fn=lambda s, r: U, blocks=True)
  out = probe(_state(), None)
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(A)])
  u = np.concatenate([np.ravel(x) for x in jax.tree.leaves(U)])
  np.testing.assert_allclose(out['update_sharpness'], a @ u ** 2 / (u @ u),
                             rtol=1e-6)
  np.testing.assert_allclose(out['update_sharpness/l1'],
                             (1 + 2 + 3 * 4) / (1 + 1 + 4), rtol=1e-6)
  np.testing.assert_allclose(out['update_sharpness/l2'],
                             (6 * 9 + 7) / 10, rtol=1e-6)
  # H is block diagonal here: each share is the layer's u_l^T H u_l / |u|^2.
  np.testing.assert_allclose(out['update_sharpness_share/l1'], 15 / 16,
                             rtol=1e-6)
  np.testing.assert_allclose(out['update_sharpness_share/l2'], 61 / 16,
                             rtol=1e-6)


def test_update_ratio_by_hand():
  out = up.UpdateRatioProbe(1, update_fn=lambda s, r: U)(_state(), None)
  np.testing.assert_allclose(out['update_ratio/l1'], np.sqrt(6) / 1.0,
                             rtol=1e-6)
  np.testing.assert_allclose(out['update_ratio/l2'],
                             np.sqrt(10) / np.sqrt(0.75), rtol=1e-6)
  np.testing.assert_allclose(out['update_ratio'],
                             np.sqrt(16) / np.sqrt(7 * 0.25), rtol=1e-6)


def test_layer_traces_and_gap():
  """Diagonal H and G: every Rademacher form is the exact trace (z^2 = 1);
  with cross-layer couplings the forms stay unbiased (within 4 s.e.)."""
  hvp = lambda v: jax.tree.map(lambda a, x: a * x, A, v)
  ggn = lambda v: jax.tree.map(lambda a, x: 0.5 * a * x, A, v)
  forms = up.layer_trace_forms(hvp, ggn, PARAMS, jax.random.PRNGKey(0), 4)
  np.testing.assert_allclose(forms['l1'][0], [10.] * 4)
  np.testing.assert_allclose(forms['l2'][1], [9.] * 4)
  # A coupling between the layers: tr of each diagonal block is unchanged.
  m = jax.random.normal(jax.random.PRNGKey(1), (7, 7))
  m = m + m.T
  from jax.flatten_util import ravel_pytree
  unravel = ravel_pytree(PARAMS)[1]
  dense = lambda v: unravel(m @ ravel_pytree(v)[0])
  fh, fg = up.layer_trace_forms(dense, hvp, PARAMS, jax.random.PRNGKey(2),
                                4000)['l2']
  mean, se = up._mean_se(fh - fg)
  want = float(np.trace(m[4:, 4:])) - 18.0   # l2/bias comes last.
  assert abs(mean - want) < 4 * se, (mean, want, se)


def test_spectral_norms_warm_start_and_state():
  w = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
  params = {'dense': {'kernel': w, 'bias': jnp.ones(4)}}
  probe = up.SpectralNormProbe(1, updates=False, cold_iters=300)
  out = probe(_state(params), None)
  assert list(out) == ['spectral_norm/dense/kernel']
  np.testing.assert_allclose(out['spectral_norm/dense/kernel'],
                             np.linalg.norm(np.asarray(w), 2), rtol=1e-5)
  # A resumed probe warm-starts from the saved vector: one iteration is enough.
  resumed = up.SpectralNormProbe(1, updates=False, num_iters=1)
  resumed.load_state_dict(probe.state_dict())
  np.testing.assert_allclose(
      resumed(_state(params), None)['spectral_norm/dense/kernel'],
      np.linalg.norm(np.asarray(w), 2), rtol=1e-5)


def test_gradient_noise_scale_on_a_linear_model():
  """Per-example gradients d_n ~ N(G, Sigma) (the loss mean_n d_n . w):
  B_simple = tr Sigma / |G|^2 = 12 / 4 = 3."""
  g = jnp.array([2., 0., 0.])
  sigma_sqrt = jnp.diag(jnp.array([1., 2., jnp.sqrt(7.)]))
  loss = lambda w, d: jnp.mean(d @ w)
  key = jax.random.PRNGKey(0)
  grad = jax.grad(loss)
  draws = g[None, None] + jax.random.normal(key, (400, 16, 3)) @ sigma_sqrt
  out = ns.noise_scale([grad(jnp.zeros(3), d) for d in draws], 16)
  assert abs(out['gns_b_simple'] - 3.0) < 4 * out['gns_b_simple_stderr']
  assert out['gns_b_simple_stderr'] < 0.3
  assert abs(out['gns_trace_cov'] - 12.0) < 4 * out['gns_trace_cov_stderr']
  # No noise at all: tr Sigma is exactly 0.
  same = ns.noise_scale([g, g, g], 8)
  assert same['gns_trace_cov'] == pytest.approx(0.0, abs=1e-12)
  with pytest.raises(ValueError, match='at least 2'):
    ns.noise_scale([g], 8)


def test_probes_from_the_config_log_into_metrics(tmp_path):
  from dynamics import train
  from tests.test_probes import tiny_config
  config = tiny_config()
  config.num_steps, config.checkpoint.every_steps = 4, 2
  config.analysis.ntk_every = config.analysis.sharpness_every = None
  config.analysis.update_sharpness_every = 2
  config.analysis.update_ratio_every = 2
  config.analysis.layer_trace_every = 4
  config.analysis.layer_trace_probes = 2
  config.analysis.spectral_norm_every = 2
  config.analysis.gns_every = 4
  config.analysis.gns_batches = 2
  config.analysis.activation_rms_every = 4
  built = probes.from_config(config)
  assert [p.name for p in built] == ['update_sharpness', 'update_ratio',
                                     'layer_trace', 'spectral_norm', 'gns',
                                     'activation_rms']
  train.train_and_evaluate(config, str(tmp_path), probes=built)
  with open(os.path.join(tmp_path, 'metrics.jsonl')) as f:
    lines = {r['step']: r for r in map(json.loads, f)}
  last = lines[4]
  for key in ('update_sharpness', 'update_sharpness_share/dense_0',
              'update_ratio/dense_0', 'hessian_trace/dense_0',
              'gn_gap_stderr', 'spectral_norm/dense_0/kernel',
              'update_spectral_norm/dense_0/kernel', 'gns_b_simple'):
    assert key in last and np.isfinite(last[key]), key
  assert 'update_ratio/dense_0' in lines[2] and 'gns_b_simple' not in lines[2]
  assert last['update_ratio'] > 0
  # The first layer's output RMS, by hand from the final parameters.
  from dynamics.runs import Run
  run = Run.open(str(tmp_path))
  params = run.params(4)['dense_0']
  x = np.asarray(run.probe_batches(1)[0]['inputs'], np.float32)
  h = x.reshape(len(x), -1) @ np.asarray(params['kernel']) + np.asarray(
      params['bias'])
  np.testing.assert_allclose(last['activation_rms/dense_0'],
                             np.sqrt(np.mean(h ** 2)), rtol=1e-5)
  assert 'activation_rms/head' in last and 'activation_rms/norm_0' in last


def test_bad_config_values_name_the_field():
  from dynamics.errors import ConfigError
  from tests.test_probes import tiny_config
  config = tiny_config()
  config.analysis.gns_every, config.analysis.gns_batches = 2, 1
  with pytest.raises(ConfigError, match='analysis.gns_batches'):
    probes.from_config(config)
  config.analysis.gns_batches, config.analysis.spectral_norm_every = 2, 0
  with pytest.raises(ConfigError, match='analysis.spectral_norm_every'):
    probes.from_config(config)
