"""Tests of analysis/ntk: exact kernels, method agreement, the wide limit."""

import json
import os
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import ntk as ntk_lib
from analysis import probes

jax.config.update('jax_numpy_rank_promotion', 'raise')


class TinyMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(7)(x.reshape(x.shape[0], -1)))
    return nn.Dense(3)(x)


class TinyCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(2)(x)


def reference_ntk(apply_fn, params, x1, x2):
  """Dense J J^T from the whole-batch Jacobian: the definition, nothing more."""
  def jac(x):
    j = jax.jacrev(lambda p: apply_fn(p, x))(params)
    n, k = apply_fn(params, x).shape
    return jnp.concatenate([l.reshape(n, k, -1) for l in jax.tree.leaves(j)], -1)
  j1, j2 = jac(x1), jac(x2)
  return jnp.einsum('ikp,jlp->ijkl', j1, j2)


def test_linear_model_ntk_is_gram_matrix_times_identity():
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (5, 4), jnp.float64)
    w = jax.random.normal(jax.random.key(1), (4, 3), jnp.float64)
    apply_fn = lambda w, x: x @ w
    gram = x @ x.T
    for method in ('jacobian', 'ntvp'):
      full = ntk_lib.empirical_ntk(apply_fn, w, x, method=method,
                                   trace_logits=False, batch_size=2)
      expected = gram[:, :, None, None] * jnp.eye(3)[None, None]
      np.testing.assert_allclose(full, expected, rtol=0, atol=1e-12)
      traced = ntk_lib.empirical_ntk(apply_fn, w, x, method=method)
      np.testing.assert_allclose(traced, 3 * gram, rtol=0, atol=1e-12)


@pytest.mark.parametrize('module,shape,symmetric', [
    (TinyMLP(), (6, 5), False), (TinyCNN(), (6, 5, 5, 2), True)])
def test_methods_agree_with_the_definition_float64(module, shape, symmetric):
  with jax.enable_x64(True):
    x1 = jax.random.normal(jax.random.key(2), shape, jnp.float64)
    x2 = None if symmetric else jax.random.normal(jax.random.key(3), (3,) + shape[1:], jnp.float64)
    params = jax.tree.map(lambda a: a.astype(jnp.float64),
                          module.init(jax.random.key(4), x1)['params'])
    apply_fn = lambda p, x: module.apply({'params': p}, x)
    ref = reference_ntk(apply_fn, params, x1, x1 if symmetric else x2)
    scale = float(jnp.max(jnp.abs(ref)))
    # batch_size=4 over 6 (and 3) examples: several blocks, a padded last one,
    # and (symmetric) blocks below the diagonal mirrored rather than computed.
    full_j = ntk_lib.empirical_ntk(apply_fn, params, x1, x2, method='jacobian',
                                   trace_logits=False, batch_size=4)
    full_v = ntk_lib.empirical_ntk(apply_fn, params, x1, x2, method='ntvp',
                                   trace_logits=False, batch_size=4)
    np.testing.assert_allclose(full_j, ref, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(full_v, full_j, rtol=0, atol=1e-6 * scale)
    for method in ('jacobian', 'ntvp'):
      traced = ntk_lib.empirical_ntk(apply_fn, params, x1, x2, method=method,
                                     batch_size=4)
      np.testing.assert_allclose(traced, jnp.einsum('ijkk->ij', ref), rtol=0,
                                 atol=1e-6 * scale)


def test_batchnorm_model_is_taken_in_inference_mode():
  from dynamics.models import MLP
  model = MLP(hidden_sizes=(8,), num_outputs=3, norm='batchnorm')
  x = jax.random.normal(jax.random.key(5), (6, 4))
  variables = model.init(jax.random.key(6), x, train=False)
  state = {k: v for k, v in variables.items() if k != 'params'}
  # Running statistics far from the batch's: train mode would give another kernel.
  state = jax.tree.map(lambda s: s + 3.0, state)
  apply_fn = ntk_lib.inference_apply_fn(model, state)
  one_by_one = ntk_lib.empirical_ntk(apply_fn, variables['params'], x,
                                     method='jacobian', batch_size=1)
  ref = jnp.einsum('ijkk->ij', reference_ntk(apply_fn, variables['params'], x, x))
  np.testing.assert_allclose(one_by_one, ref, rtol=1e-5, atol=1e-5)


def _arccos_ntk(x):
  """Infinite-width NTK of f = a . relu(W x) / sqrt(m), a, W ~ N(0, 1)."""
  norms = jnp.linalg.norm(x, axis=1)
  dots = x @ x.T
  cos = jnp.clip(dots / (norms[:, None] * norms[None, :]), -1.0, 1.0)
  theta = jnp.arccos(cos)
  k1 = norms[:, None] * norms[None, :] * (jnp.sin(theta) + (jnp.pi - theta) * cos) / (2 * jnp.pi)
  k0 = (jnp.pi - theta) / (2 * jnp.pi)
  return k1 + dots * k0


def test_two_layer_relu_ntk_approaches_the_arccos_kernel_with_width():
  with jax.enable_x64(True):
    angles = jnp.array([0.0, 0.7, 2.0, 3.0])
    x = jnp.stack([jnp.cos(angles), jnp.sin(angles), jnp.full(4, 0.0)], 1)
    limit = _arccos_ntk(x)
    apply_fn = lambda p, x: (jax.nn.relu(x @ p['w']) @ p['a'] / jnp.sqrt(p['a'].shape[0]))[:, None]
    errors = []
    for width in (256, 4096, 65536):
      kw, ka = jax.random.split(jax.random.key(width))
      params = {'w': jax.random.normal(kw, (3, width), jnp.float64),
                'a': jax.random.normal(ka, (width,), jnp.float64)}
      emp = ntk_lib.empirical_ntk(apply_fn, params, x, method='jacobian')
      err = float(jnp.max(jnp.abs(emp - limit)))
      # Each entry is a mean of `width` iid terms of std <= sqrt(3) (|x| = 1):
      # five standard deviations of that mean.
      assert err < 5 * np.sqrt(3.0) / np.sqrt(width), (width, err)
      errors.append(err)
    assert errors[-1] < errors[0] / 4


def test_too_large_probe_set_gets_the_estimate_and_a_batch_size_that_fits():
  module = TinyMLP()
  x = jnp.ones((64, 5))
  params = module.init(jax.random.key(0), x)['params']
  apply_fn = lambda p, x: module.apply({'params': p}, x)
  p = sum(l.size for l in jax.tree.leaves(params))  # 5*7+7+7*3+3 = 66
  limit = 64 * 64 * 4 + 2 * 10 * 3 * p * 4          # The kernel + 10-example blocks.
  with pytest.raises(ntk_lib.NTKMemoryError, match=r'GiB.*batch_size=10 '):
    ntk_lib.empirical_ntk(apply_fn, params, x, method='jacobian',
                          memory_limit=limit)
  fits = ntk_lib.empirical_ntk(apply_fn, params, x, method='jacobian',
                               batch_size=10, memory_limit=limit)
  whole = ntk_lib.empirical_ntk(apply_fn, params, x, method='jacobian')
  np.testing.assert_allclose(fits, whole, rtol=1e-5, atol=1e-5)
  assert ntk_lib.plan(apply_fn, params, 64, 64, x, memory_limit=limit) == ('jacobian', 10)
  # Not even one example's Jacobian fits: 'auto' falls back to NTK-vector products.
  assert ntk_lib.plan(apply_fn, params, 64, 64, x,
                      memory_limit=64 * 64 * 4 + 4 * p * 4)[0] == 'ntvp'
  with pytest.raises(ntk_lib.NTKMemoryError, match='alone needs'):
    ntk_lib.empirical_ntk(apply_fn, params, x, memory_limit=1000)


def test_kernel_statistics_exact_values():
  y = jnp.array([0, 1, 1, 2, 0])
  onehot = jax.nn.one_hot(y, 3)
  yc = onehot - onehot.mean(0, keepdims=True)
  assert abs(float(ntk_lib.kernel_alignment(yc @ yc.T, y)) - 1.0) < 1e-6
  # Adding a constant or a per-row offset is removed by the centering.
  assert abs(float(ntk_lib.kernel_alignment(2 * yc @ yc.T + 5.0, y)) - 1.0) < 1e-6
  assert abs(float(ntk_lib.kernel_alignment(jnp.eye(5), y))
             - float(jnp.sum(yc ** 2) / (2 * jnp.linalg.norm(yc.T @ yc)))) < 1e-6
  full = jnp.einsum('ik,jl->ijkl', yc, yc)
  assert abs(float(ntk_lib.kernel_alignment(full, y)) - 1.0) < 1e-6
  a = jnp.arange(16.0).reshape(4, 4)
  assert abs(float(ntk_lib.kernel_distance(a, 3 * a))) < 1e-6
  assert abs(float(ntk_lib.kernel_distance(jnp.eye(2), jnp.array([[0., 1.], [1., 0.]]))) - 1) < 1e-6
  # Nearly equal kernels keep their (tiny) distance in float32, where
  # 1 - cos would round to 0: compare with the float64 value.
  rng = np.random.default_rng(0)
  base = rng.standard_normal((32, 32))
  near = base + 1e-5 * rng.standard_normal((32, 32))
  u, v = base.ravel() / np.linalg.norm(base), near.ravel() / np.linalg.norm(near)
  exact = 0.5 * np.sum((u - v) ** 2)
  got = float(ntk_lib.kernel_distance(jnp.asarray(base, jnp.float32),
                                      jnp.asarray(near, jnp.float32)))
  assert exact > 0 and abs(got - exact) < 0.1 * exact
  p0 = {'a': jnp.array([3.0, 0.0]), 'b': jnp.array([4.0])}
  p1 = {'a': jnp.array([3.0, 1.0]), 'b': jnp.array([4.0])}
  assert abs(float(ntk_lib.relative_param_change(p0, p1)) - 0.2) < 1e-7
  full_sym = full + jnp.transpose(full, (1, 0, 3, 2)) + 0.1 * jnp.einsum('ij,kl->ijkl', jnp.eye(5), jnp.eye(3))
  mat = jnp.transpose(full_sym, (0, 2, 1, 3)).reshape(15, 15)
  np.testing.assert_allclose(ntk_lib.ntk_eigs(full_sym, k=4),
                             np.sort(np.linalg.eigvalsh(np.asarray(mat)))[::-1][:4],
                             rtol=1e-5, atol=1e-5)


def test_probe_remembers_init_and_previous_kernel():
  module = TinyMLP()
  x = jax.random.normal(jax.random.key(7), (8, 5))
  y = jnp.arange(8) % 3
  params0 = module.init(jax.random.key(8), x)['params']
  run = types.SimpleNamespace(
      dataset=types.SimpleNamespace(batch_size=4),
      probe_batches=lambda n: [{'inputs': x[4 * i:4 * i + 4], 'targets': y[4 * i:4 * i + 4]}
                               for i in range(n)],
      apply_fn=lambda ms: (lambda p, xx: module.apply({'params': p}, xx)))
  probe = probes.NTKProbe(5, num_examples=6)
  assert probe.every == 5
  state = lambda p, s: types.SimpleNamespace(params=p, model_state={}, step=s)
  m0 = probe(state(params0, 0), run)
  assert m0['ntk_distance_init'] == 0.0 and m0['ntk_velocity'] == 0.0
  k0 = ntk_lib.empirical_ntk(lambda p, xx: module.apply({'params': p}, xx), params0, x[:6])
  assert abs(m0['ntk_trace'] - float(jnp.trace(k0))) < 1e-4 * abs(m0['ntk_trace'])
  assert abs(m0['ntk_top_eig'] - float(ntk_lib.ntk_eigs(k0, 1)[0])) < 1e-4 * m0['ntk_top_eig']
  params1 = jax.tree.map(lambda a: a * 1.5 + 0.1, params0)
  m1 = probe(state(params1, 5), run)
  k1 = ntk_lib.empirical_ntk(lambda p, xx: module.apply({'params': p}, xx), params1, x[:6])
  d01 = float(ntk_lib.kernel_distance(k0, k1))
  assert d01 > 1e-4
  assert abs(m1['ntk_distance_init'] - d01) < 1e-5
  assert abs(m1['ntk_velocity'] - d01 / 5) < 1e-5
  params2 = jax.tree.map(lambda a: a * 0.5, params1)
  m2 = probe(state(params2, 15), run)
  k2 = ntk_lib.empirical_ntk(lambda p, xx: module.apply({'params': p}, xx), params2, x[:6])
  assert abs(m2['ntk_distance_init'] - float(ntk_lib.kernel_distance(k0, k2))) < 1e-5
  assert abs(m2['ntk_velocity'] - float(ntk_lib.kernel_distance(k1, k2)) / 10) < 1e-5


def test_probe_logs_during_training(tmp_path):
  from configs import base
  from dynamics import train
  c = base.get_config()
  c.num_steps, c.log_every, c.eval_every, c.progress = 4, 2, 4, False
  c.model.name, c.model.hidden_sizes = 'mlp', (8,)
  c.data.name, c.data.batch_size = 'digits', 16
  c.optimizer.name, c.optimizer.learning_rate = 'sgd', 0.1
  c.schedule.name, c.schedule.warmup_steps = 'constant', 0
  c.checkpoint.async_save = False
  c.analysis.ntk_every, c.analysis.ntk_num_examples = 2, 20
  train.train_and_evaluate(c, str(tmp_path), probes=probes.from_config(c))
  lines = [json.loads(l) for l in open(os.path.join(tmp_path, 'metrics.jsonl'))]
  logged = {l['step']: l for l in lines if 'ntk_trace' in l}
  assert sorted(logged) == [0, 2, 4]
  assert logged[0]['ntk_distance_init'] == 0.0
  assert logged[4]['ntk_distance_init'] > 0.0
  assert -1.0 <= logged[4]['ntk_alignment'] <= 1.0

  # After training, the same statistics from the checkpoint (step 0 has none:
  # it is rebuilt from the seed) on the same probe set.
  from dynamics import runs
  run = runs.Run.open(str(tmp_path))
  report = ntk_lib.analyze_checkpoints(run, [0, 4], num_examples=20,
                                       num_eigs=5)
  first, last = report['per_step']
  assert first['distance_from_first'] == 0.0
  assert first['relative_param_change'] == 0.0
  assert last['relative_param_change'] > 0.0
  for rec in (first, last):
    probe = logged[rec['step']]
    np.testing.assert_allclose(rec['trace'], probe['ntk_trace'], rtol=1e-6)
    np.testing.assert_allclose(rec['eigenvalues'][0], probe['ntk_top_eig'],
                               rtol=1e-6)
    np.testing.assert_allclose(rec['alignment'], probe['ntk_alignment'],
                               rtol=1e-6)
  np.testing.assert_allclose(last['distance_from_first'],
                             logged[4]['ntk_distance_init'], rtol=1e-5)
  assert report['distance_matrix'][0][1] == report['distance_matrix'][1][0]
  with pytest.raises(runs.RunNotFoundError, match=r'no checkpoint at step 3 '
                     r'.*available steps: \[4\]'):
    ntk_lib.analyze_checkpoints(run, [0, 3])

  # The command writes the same report, JSON and PNG.
  out = tmp_path / 'ntk_out'
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, '-m', 'analysis.ntk', f'--workdir={tmp_path}',
       '--steps=0,4', '--num_examples=20', '--num_eigs=5',
       f'--output_dir={out}'], cwd=root, capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stderr
  assert json.load(open(out / 'ntk.json'))['per_step'] == report['per_step']
  assert os.path.getsize(out / 'ntk.png') > 0


class WideActivations(nn.Module):
  """Few parameters, large activations: the Jacobian-only plan underestimates."""

  @nn.compact
  def __call__(self, x):
    a = self.param('a', nn.initializers.ones, ())
    grid = jnp.linspace(-1.0, 1.0, 2048)[None, None]
    h = jnp.mean(jnp.tanh(a * x[:, :, None] * grid), axis=-1)  # (N, 5) via (N, 5, 2048)
    return nn.Dense(4)(h)                                       # 25 parameters


def test_activations_count_in_the_memory_fit(monkeypatch):
  """XLA's memory analysis of the compiled block shrinks the block (the
  kernel unchanged) or refuses, naming the estimate."""
  module = WideActivations()
  x = jax.random.normal(jax.random.key(0), (32, 5))
  params = module.init(jax.random.key(1), x)['params']
  apply_fn = lambda p, xx: module.apply({'params': p}, xx)
  reference = ntk_lib.empirical_ntk(apply_fn, params, x, method='jacobian')
  # The Jacobians of a block of 32 take ~26 kB: the plan alone takes one
  # block; its activations (~1.3 MB by XLA's analysis) do not fit.
  limit = 250_000
  assert ntk_lib.plan(apply_fn, params, 32, 32, x, method='jacobian',
                      memory_limit=limit) == ('jacobian', 32)
  from analysis.ntk import kernel
  blocks, measure = [], kernel._memory_of
  monkeypatch.setattr(kernel, '_memory_of', lambda fn, p, xb: (
      blocks.append(xb.shape[0]), measure(fn, p, xb))[1])
  fitted = ntk_lib.empirical_ntk(apply_fn, params, x, method='jacobian',
                                 memory_limit=limit)
  np.testing.assert_allclose(fitted, reference, rtol=1e-5, atol=1e-6)
  assert blocks[0] == 32 and 1 <= blocks[-1] < 8, blocks  # Shrunk to fit.
  with pytest.raises(ntk_lib.NTKMemoryError, match=r'needs [\d.]+ GiB for even '
                     r'one example per block .* memory analysis'):
    ntk_lib.empirical_ntk(apply_fn, params, x, method='jacobian',
                          memory_limit=30_000)
