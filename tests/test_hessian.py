"""analysis/hessian against dense Hessians of small models (exact answers)."""

import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from analysis import hessian as hs
from analysis import probes
from dynamics.types import param_names

jax.config.update('jax_numpy_rank_promotion', 'raise')


# ---------------------------------------------------------------------------
# Tiny models (float64-capable: the core's models cast outputs to float32).


class TinyMLP(nn.Module):
  """4 -> 12 -> 12 -> 3 tanh MLP (255 parameters)."""

  @nn.compact
  def __call__(self, x):
    for i in range(2):
      x = jnp.tanh(nn.Dense(12, param_dtype=x.dtype, name=f'dense_{i}')(x))
    return nn.Dense(3, param_dtype=x.dtype, name='head')(x)


class TinyTransformer(nn.Module):
  """One pre-LN block, 2 heads, d=6, vocab 6, tied head (432 parameters)."""
  dtype: jnp.dtype = jnp.float64

  @nn.compact
  def __call__(self, tokens):
    d, kw = 6, dict(param_dtype=self.dtype, dtype=self.dtype)
    embed = nn.Embed(6, d, embedding_init=nn.initializers.normal(0.5),
                     name='embed', **kw)
    pos = self.param('pos_embed', nn.initializers.normal(0.5), (5, d),
                     self.dtype)
    x = embed(tokens) + pos[None, :tokens.shape[1]]
    h = nn.LayerNorm(name='norm_attn', **kw)(x)
    qkv = nn.DenseGeneral((3, 2, d // 2), name='attn_qkv', **kw)(h)
    # Explicit attention: jax.nn.dot_product_attention's softmax is float32.
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(d // 2)
    causal = np.tril(np.ones((tokens.shape[1],) * 2, bool))
    scores = jnp.where(causal[None, None], scores, -1e30)
    y = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(scores, axis=-1), v)
    x = x + nn.DenseGeneral(d, axis=(-2, -1), name='attn_out', **kw)(y)
    h = nn.LayerNorm(name='norm_mlp', **kw)(x)
    h = nn.Dense(d, name='mlp_out', **kw)(jax.nn.gelu(
        nn.Dense(2 * d, name='mlp_in', **kw)(h)))
    x = nn.LayerNorm(name='norm_final', **kw)(x + h)
    return embed.attend(x)


def _cross_entropy(logits, targets):
  log_z = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.mean(log_z - picked)


def _mlp_problem(dtype, num_batches=2, seed=0):
  """(loss_fn, params, batches) of a tanh MLP on 3-class random data."""
  rng = np.random.default_rng(seed)
  batches = [{'inputs': rng.normal(size=(12, 4)).astype(dtype),
              'targets': rng.integers(0, 3, size=12)}
             for _ in range(num_batches)]
  model = TinyMLP()
  params = model.init(jax.random.PRNGKey(seed),
                      jnp.zeros((1, 4), dtype))['params']

  def loss_fn(p, batch):
    return _cross_entropy(model.apply({'params': p}, batch['inputs']),
                          batch['targets'])
  return loss_fn, params, batches


def _transformer_problem(dtype, num_batches=2, seed=0):
  rng = np.random.default_rng(seed)
  batches = [{'inputs': rng.integers(0, 6, size=(4, 5)),
              'targets': rng.integers(0, 6, size=(4, 5))}
             for _ in range(num_batches)]
  model = TinyTransformer(dtype)
  params = model.init(jax.random.PRNGKey(seed),
                      jnp.zeros((1, 5), jnp.int32))['params']

  def loss_fn(p, batch):
    return _cross_entropy(model.apply({'params': p}, batch['inputs']),
                          batch['targets'])
  return loss_fn, params, batches


def _dense_hessian(loss_fn, params, batches):
  """The exact Hessian of the mean batch loss, flattened (float64).

  The losses are means, so the mean over equal batches is the loss of their
  concatenation (tested below), which halves what XLA compiles.
  """
  from jax.flatten_util import ravel_pytree
  flat, unravel = ravel_pytree(params)
  batch = jax.tree.map(lambda *x: np.concatenate(x), *batches)
  return np.asarray(_compiled_hessian(loss_fn, unravel)(flat, batch),
                    np.float64)


@functools.lru_cache(maxsize=None)
def _compiled_hessian_cache(loss_fn, treedef_and_shapes):
  del treedef_and_shapes  # Part of the key only.
  return {}


def _compiled_hessian(loss_fn, unravel):
  """One compiled dense Hessian per loss (the unravel of equal trees agree)."""
  cache = _compiled_hessian_cache(loss_fn, None)
  if 'fn' not in cache:
    cache['fn'] = jax.jit(jax.hessian(lambda x, b: loss_fn(unravel(x), b)))
  return cache['fn']


@functools.lru_cache(maxsize=None)
def _exact(name):
  """(problem, dense Hessian, eigenvalues desc, eigenvectors) in float64."""
  with jax.enable_x64(True):
    problem = {'mlp': _mlp_problem, 'transformer': _transformer_problem}[name](
        np.float64)
    h = _dense_hessian(*problem)
    w, v = np.linalg.eigh(h)
  return problem, h, w[::-1], v[:, ::-1]


def _flat(tree):
  return np.asarray(jax.flatten_util.ravel_pytree(tree)[0], np.float64)


def _hessian(loss_fn, params, batches, **kwargs):
  return hs.curvature('hessian', params, batches, loss_fn=loss_fn, **kwargs)


# ---------------------------------------------------------------------------
# Curvature-vector products: Hessian, GGN, Fisher, empirical Fisher.


def test_hvp_matches_dense_hessian_and_concatenated_batch():
  with jax.enable_x64(True):
    (loss_fn, params, batches), h, _, _ = _exact('transformer')
    v = jax.tree.map(lambda p: jnp.asarray(
        np.random.default_rng(1).normal(size=p.shape)), params)
    hv = _flat(hs.hvp_fn(loss_fn, params, batches)(v))
    # `h` is the Hessian of the loss of the two batches concatenated (4 + 4
    # sequences in one batch): the two-batch HVP equals that batch's.
    np.testing.assert_allclose(hv, h @ _flat(v), rtol=1e-6,
                               atol=1e-9 * np.abs(hv).max())


def test_hvp_is_traced_once_for_many_batches_and_calls():
  traces = []
  loss_fn, params, batches = _mlp_problem(np.float32, num_batches=3)

  def counting_loss(p, b):
    traces.append(1)
    return loss_fn(p, b)

  hvp = hs.hvp_fn(counting_loss, params, batches)
  for scale in (1.0, 2.0):
    hvp(jax.tree.map(lambda p: scale * jnp.ones_like(p), params))
  first = len(traces)
  # A new operator at other parameters (the next training-time probe).
  other = jax.tree.map(lambda p: p + 0.1, params)
  hs.hvp_fn(counting_loss, other, batches)(other)
  assert first >= 1 and len(traces) == first


def _model_fns():
  model = TinyMLP()
  model_fn = lambda p, b: model.apply({'params': p}, b['inputs'])
  out_loss = lambda z, b: _cross_entropy(z, b['targets'])
  return model_fn, out_loss


def test_ggn_fisher_and_empirical_fisher_match_their_dense_matrices():
  """Each product against its matrix built from Jacobians: the GGN from the
  output Hessian; the Fisher from per-position gradients of the negative
  log-likelihood at labels sampled from the model (the same samples); the
  empirical Fisher at the data's labels; a Gaussian likelihood's Fisher
  likewise."""
  with jax.enable_x64(True):
    (_, params, batches), _, _, _ = _exact('mlp')
    model_fn, out_loss = _model_fns()
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    jacobian = jax.jit(jax.jacfwd(
        lambda x, b: model_fn(unravel(x), b).reshape(-1)))
    output_hessian = jax.jit(jax.hessian(
        lambda z, b: out_loss(z.reshape(12, 3), b)))
    lik = hs.Likelihood('categorical', num_samples=2, seed=5)
    nll_grads = jax.jit(jax.jacrev(
        lambda x, b, y: lik.nll(model_fn(unravel(x), b), y)))
    dense = {'ggn': 0.0, 'fisher': 0.0, 'empirical_fisher': 0.0}
    for i, b in enumerate(batches):
      jac = jacobian(flat, b)
      dense['ggn'] += jac.T @ output_hessian(model_fn(params, b).reshape(-1),
                                             b) @ jac / len(batches)
      labels = lik.sample(jax.random.fold_in(jax.random.PRNGKey(5), i),
                          model_fn(params, b))
      for y in labels:
        g = nll_grads(flat, b, y)            # (positions, parameters)
        dense['fisher'] += g.T @ g / (12 * 2 * len(batches))
      g = nll_grads(flat, b, b['targets'])
      dense['empirical_fisher'] += g.T @ g / (12 * len(batches))
    v = np.random.default_rng(2).normal(size=flat.size)
    for kind, matrix in dense.items():
      got = _flat(hs.curvature(kind, params, batches, model_fn=model_fn,
                               output_loss_fn=out_loss, likelihood=lik
                               ).matvec(unravel(jnp.asarray(v))))
      np.testing.assert_allclose(got, np.asarray(matrix) @ v, rtol=1e-8,
                                 atol=1e-12, err_msg=kind)
    # Gaussian likelihood: the Fisher is J^T J / sigma^2 sampled the same way.
    gauss = hs.Likelihood('gaussian', noise_std=0.5)
    b = {'inputs': batches[0]['inputs'],
         'targets': np.zeros((12, 3), np.float64)}
    jac = jacobian(flat, b).reshape(12, 3, -1)
    eps = (gauss.sample(jax.random.fold_in(jax.random.PRNGKey(0), 0),
                        model_fn(params, b))[0] - model_fn(params, b)) / 0.5
    g = -np.einsum('nc,ncp->np', eps / 0.5, jac)
    got = _flat(hs.curvature('fisher', params, [b], model_fn=model_fn,
                             likelihood=gauss).matvec(unravel(jnp.asarray(v))))
    np.testing.assert_allclose(got, g.T @ (g @ v) / 12, rtol=1e-8)


# ---------------------------------------------------------------------------
# Eigenpairs with their defaults, against the dense spectrum.


def _angles(vecs, exact_vecs):
  got = np.stack([_flat(v) for v in vecs], axis=1)
  cos = np.abs(np.sum(got * exact_vecs, axis=0)) / np.linalg.norm(got, axis=0)
  # sin is accurate where arccos(cos ~ 1) is not.
  return np.arcsin(np.sqrt(np.clip(1 - cos ** 2, 0, 1)))


def test_top_eigenpairs_defaults_converge_float64():
  """No num_iters, no tol: converged to 1e-6 relative of dense eigh."""
  with jax.enable_x64(True):
    (loss_fn, params, batches), _, w, v = _exact('transformer')
    op = _hessian(loss_fn, params, batches)
    vals, vecs, info = hs.top_eigenpairs(op, k=5, return_info=True)
    np.testing.assert_allclose(np.asarray(vals), w[:5], rtol=1e-6)
    assert np.all(_angles(vecs, v[:, :5]) < 1e-4)
    assert info['converged'] and info['tol'] == 1e-9
    assert np.all(info['relative_residuals'] <= 1e-9)
    # The most negative curvature (the same compiled solver).
    low, _ = hs.top_eigenpairs(op, k=2, which='SA')
    np.testing.assert_allclose(np.asarray(low), w[-2:], rtol=1e-6)


def test_top_eigenpairs_defaults_converge_float32():
  """A float32 model with the defaults: within 1e-4 of a float64 dense eigh;
  a cap too small for the tolerance warns and says so in ``info``."""
  loss_fn, params, batches = _mlp_problem(np.float32)
  op = _hessian(loss_fn, params, batches)
  vals, _, info = hs.top_eigenpairs(op, k=5, return_info=True)
  with jax.enable_x64(True):
    h = _dense_hessian(loss_fn, params, batches)
  w = np.linalg.eigvalsh(h)[::-1]
  assert vals.dtype == jnp.float32 and info['converged']
  np.testing.assert_allclose(np.asarray(vals), w[:5], rtol=1e-4)
  with pytest.warns(hs.ConvergenceWarning,
                    match=r'top_eigenpairs did not converge: after 6 HVPs'):
    _, _, info = hs.top_eigenpairs(op, k=3, num_iters=6, return_info=True)
  assert not info['converged'] and info['num_hvps'] == 6


def test_slq_density_integrates_to_one_and_matches_moments():
  """Moments of the SLQ density vs the exact spectrum's, to 1e-2 of the
  spectral scale lambda_max (second moment: of lambda_max^2). Relative to the
  moments themselves is out of reach of any random-probe method here: the
  mean is a 1% residue of cancelling positive and negative curvature."""
  with jax.enable_x64(True):
    (loss_fn, params, batches), _, w, _ = _exact('mlp')
    grid, density, info = hs.spectral_density(
        _hessian(loss_fn, params, batches), num_probes=30, num_iters=40,
        sigma=1e-3,
        tol=None, key=jax.random.PRNGKey(0), return_info=True)
  assert info['num_hvps'] == 30 * 40 and info['num_iters'] == 40
  np.testing.assert_allclose(np.trapezoid(density, grid), 1, atol=1e-6)
  mean = np.trapezoid(grid * density, grid)
  second = np.trapezoid(grid ** 2 * density, grid)
  scale = np.abs(w).max()
  assert abs(mean - w.mean()) < 1e-2 * scale
  assert abs(second - np.mean(w ** 2)) < 1e-2 * scale ** 2
  # The extreme nodes are the extreme eigenvalues (Lanczos converges there).
  np.testing.assert_allclose(info['nodes'].max(), w[0], rtol=1e-6)


# ---------------------------------------------------------------------------
# Blocks, adaptive preconditioning, bad input.


def test_block_spectrum_and_block_report_match_dense_blocks():
  with jax.enable_x64(True):
    (loss_fn, params, batches), h, w, _ = _exact('transformer')
    paths = param_names(params)
    sizes = [np.size(p) for p in jax.tree.leaves(params)]
    owner = np.concatenate([np.full(s, p) for p, s in zip(paths, sizes)])
    selected = np.array(['attn' in p for p in owner])
    sub = np.linalg.eigvalsh(h[np.ix_(selected, selected)])[::-1]
    op = _hessian(loss_fn, params, batches)
    vals, vecs = hs.top_eigenpairs(op.restrict('attention'), k=3)
    np.testing.assert_allclose(np.asarray(vals), sub[:3], rtol=1e-6)
    # Eigenvectors are full pytrees, zero outside the block.
    assert np.all(_flat(vecs[0])[~selected] == 0)
    with pytest.raises(ValueError, match='selects no parameters.*embed'):
      op.restrict('no_such_layer')
    with pytest.raises(ValueError, match='already restricted'):
      op.restrict('attention').restrict('mlp')
    # Per layer: the top eigenvalue, trace and Frobenius norm of each
    # diagonal block; exact for blocks of at most num_probes parameters.
    report = hs.block_report(op, blocks='layers', num_probes=80,
                             key=jax.random.PRNGKey(1))
    layers = {r['name']: r for r in report['blocks']}
    assert set(layers) == {p.rpartition('/')[0] or p for p in paths}
    for name, row in list(layers.items()) + [('whole', report['whole'])]:
      inside = (np.ones_like(selected) if name == 'whole' else
                np.isin(owner, row['params']))
      block = h[np.ix_(inside, inside)]
      assert row['size'] == inside.sum() and row['converged'], name
      np.testing.assert_allclose(row['top_eigenvalue'],
                                 np.linalg.eigvalsh(block)[-1], rtol=1e-6)
      if row['exact']:
        np.testing.assert_allclose(row['trace'], np.trace(block), rtol=1e-9)
        np.testing.assert_allclose(row['frobenius'], np.linalg.norm(block),
                                   rtol=1e-9)
      else:
        assert abs(row['trace'] - np.trace(block)) < 4 * row['trace_stderr']
    assert report['whole']['top_eigenvalue'] == pytest.approx(w[0], rel=1e-6)
    assert any(r['exact'] for r in layers.values())
    assert not report['whole']['exact']


def test_preconditioned_sharpness_matches_dense():
  with jax.enable_x64(True):
    (loss_fn, params, batches), h, _, _ = _exact('mlp')
    tx = optax.adam(1e-2, b1=0.9, b2=0.99, eps=1e-8)
    state = tx.init(params)
    p = params
    for _ in range(3):
      grads = jax.grad(loss_fn)(p, batches[0])
      updates, state = tx.update(grads, state, p)
      p = optax.apply_updates(p, updates)
    nu = _flat(state[0].nu) / (1 - 0.99 ** 3)
    precond_h = h / (np.sqrt(nu) + 1e-8)[:, None]  # P^{-1} H at `params`.
    exact = np.max(np.linalg.eigvals(precond_h).real)
    op = _hessian(loss_fn, params, batches)
    got = hs.preconditioned_sharpness(op, state, b2=0.99, eps=1e-8)
    np.testing.assert_allclose(got, exact, rtol=1e-6)
    with pytest.raises(ValueError, match='no Adam-type second moment'):
      hs.preconditioned_sharpness(op, optax.sgd(0.1).init(params))


def test_bad_input_gives_clear_errors():
  loss_fn, params, batches = _mlp_problem(np.float32)
  model_fn, out_loss = _model_fns()
  op = _hessian(loss_fn, params, batches)
  for k in (0, 256):  # 255 parameters.
    with pytest.raises(ValueError, match='between 1 and the dimension'):
      hs.top_eigenpairs(op, k=k)
  with pytest.raises(ValueError, match='larger than the cap'):
    hs.top_eigenpairs(op, k=10, num_iters=8)
  with pytest.raises(ValueError, match=r"'fisher' needs likelihood \(the "
                     'probabilistic form.*MSE'):
    hs.curvature('fisher', params, batches, model_fn=model_fn)
  with pytest.raises(ValueError, match=r"'ggn' needs output_loss_fn \("):
    hs.curvature('ggn', params, batches, model_fn=model_fn)
  with pytest.raises(TypeError, match=r"unknown curvature inputs \['modelfn'\]"):
    hs.curvature('ggn', params, batches, modelfn=model_fn)
  with pytest.raises(ValueError, match='noise model'):
    hs.Likelihood('gaussian')
  with pytest.raises(ValueError, match="kind must be one of"):
    hs.curvature('gnn', params, batches, loss_fn=loss_fn)

  def nan_loss(p, b):  # sqrt of a negative number: NaN curvature.
    return jnp.sqrt(loss_fn(p, b) - 100.0)
  with pytest.raises(FloatingPointError, match=r'HVP 1\)'):
    hs.top_eigenpairs(_hessian(nan_loss, params, batches), k=1)
  with pytest.raises(ValueError, match='same structure and shapes'):
    hs.hvp_fn(loss_fn, params, [batches[0], {'inputs': np.zeros((3, 4)),
                                             'targets': np.zeros(3, int)}])


# ---------------------------------------------------------------------------
# Training-time probe and the command.


class _FakeRun:
  """The parts of dynamics.runs.Run the probe uses."""

  def __init__(self, loss_fn, batches):
    self._loss_fn, self._batches = loss_fn, batches

  def loss_fn(self, model_state):
    del model_state
    return self._loss_fn

  def probe_batches(self, n):
    return self._batches[:n]


class _State:

  def __init__(self, step, params, opt_state):
    self.step, self.params, self.opt_state = step, params, opt_state
    self.model_state = {}


def test_sharpness_probe_warm_starts_and_logs_adaptive_and_trace():
  with jax.enable_x64(True):
    (loss_fn, params, batches), h, w, _ = _exact('mlp')
    run = _FakeRun(loss_fn, batches)
    probe = probes.SharpnessProbe(5, trace_every=10, num_iters=30,
                                  batches=probes.held_out(2), b2=0.99,
                                  eps=1e-8, tol=1e-4)
    assert probe.every == 5
    tx = optax.adam(1e-3, b2=0.99)
    opt_state = tx.init(params)
    first = probe(_State(0, params, opt_state), run)
    # Before Adam's first update there is no preconditioner to speak of.
    assert set(first) == {'sharpness', 'sharpness_hvps', 'hessian_trace',
                          'hessian_trace_stderr'}
    np.testing.assert_allclose(first['sharpness'], w[0], rtol=1e-6)
    assert abs(first['hessian_trace'] - np.trace(h)) < 4 * first[
        'hessian_trace_stderr']
    # One Adam step away: the warm start needs fewer HVPs than the cold one.
    grads = jax.grad(loss_fn)(params, batches[0])
    updates, opt_state = tx.update(grads, opt_state, params)
    moved = optax.apply_updates(params, updates)
    second = probe(_State(5, moved, opt_state), run)
    assert second['sharpness_hvps'] < first['sharpness_hvps']
    assert second['sharpness_hvps'] <= 30
    assert 'hessian_trace' not in second   # 5 is not a multiple of 10.
    h_moved = _dense_hessian(loss_fn, moved, batches)
    np.testing.assert_allclose(second['sharpness'],
                               np.linalg.eigvalsh(h_moved)[-1], rtol=1e-6)
    nu = _flat(opt_state[0].nu) / (1 - 0.99)
    exact_pre = np.max(np.linalg.eigvals(
        h_moved / (np.sqrt(nu) + 1e-8)[:, None]).real)
    np.testing.assert_allclose(second['preconditioned_sharpness'], exact_pre,
                               rtol=1e-4)


def _command(*args):
  """Runs ``python -m <args>`` from the repository root; returns the process."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run([sys.executable, '-m', *map(str, args)], cwd=root,
                        capture_output=True, text=True, timeout=600)


def test_eos_smoke_run_logs_sharpness_and_command_writes_spectrum(tmp_path,
                                                                 capsys):
  from configs import eos
  from dynamics import runs, train
  config = eos.get_config('smoke')
  train.train_and_evaluate(config, str(tmp_path),
                           probes=probes.from_config(config))
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  logged = [l for l in lines if 'sharpness' in l]
  assert [l['step'] for l in logged] == list(range(0, 31, 5))
  assert all(0 < l['sharpness'] < 100 and 1 <= l['sharpness_hvps'] <= 10
             for l in logged)

  run = runs.Run.open(str(tmp_path))
  # The command computes the spectrum of the first held-out batch's loss and
  # writes it, JSON and PNG, named by its arguments: the top 3 eigenvalues of
  # the dense Hessian, to the float32 default tolerance.
  args = ('analysis.hessian', f'--workdir={tmp_path}', '--step=20', '--k=3',
          '--density', '--num_probes=2', '--density_iters=10', '--trace',
          '--num_batches=1')
  proc = _command(*args)
  assert proc.returncode == 0, proc.stderr
  assert 'HVP costs' in proc.stdout and 'replacing' not in proc.stdout
  assert proc.stdout.count('  converged') == 3
  assert os.path.exists(tmp_path / 'hessian_20_hessian_k3.png')
  written = json.load(open(tmp_path / 'hessian_20_hessian_k3.json'))
  restored = run.restore(20, ('params', 'model_state'))
  params, model_state = restored['params'], restored['model_state']
  batch = jax.tree.map(jnp.asarray, run.dataset.eval_batch(0))
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  dense_hessian = jax.hessian(
      lambda f: run.loss_fn(model_state)(unravel(f), batch))(flat)
  dense = np.linalg.eigvalsh(np.asarray(dense_hessian, np.float64))[::-1]
  np.testing.assert_allclose(written['eigenvalues'], dense[:3], rtol=1e-4)
  assert written['eigenvalue_converged'] == [True] * 3 and written['converged']
  np.testing.assert_allclose(written['trace'], dense.sum(),
                             rtol=3 * written['trace_stderr'] / dense.sum())
  assert written['eigenvalues'][0] >= written['eigenvalues'][2]
  grid, density = np.array(written['density']['grid']), np.array(
      written['density']['values'])
  np.testing.assert_allclose(np.trapezoid(density, grid), 1, atol=1e-3)
  assert written['hvp_cost_in_gradients'] > 0
  # Per-layer table: one row per Dense layer, plus the whole model.
  proc = _command('analysis.hessian', f'--workdir={tmp_path}', '--step=20',
                  '--blocks=layers', '--num_batches=1', '--block_probes=20')
  assert proc.returncode == 0, proc.stderr
  table = json.load(open(tmp_path / 'hessian_20_hessian_blocks-layers.json'))
  assert os.path.exists(tmp_path / 'hessian_20_hessian_blocks-layers.png')
  assert [r['name'] for r in table['blocks']] == [
      p.rpartition('/')[0] for p in param_names(run.params(20))][::2]
  assert table['whole']['top_eigenvalue'] == pytest.approx(dense[0], rel=1e-4)
  with pytest.raises(runs.RunNotFoundError,
                     match=r'available steps: \[10, 20, 30\]'):
    hs.checkpoint_spectrum(run, 7)
  # User errors: one line naming what is wrong, exit status 1, before any
  # checkpoint is read or anything compiled.
  num_params = sum(np.size(p) for p in jax.tree.leaves(run.params(20)))
  for flag, message in [
      ('--step=7', f'Error: no checkpoint at step 7 in {tmp_path}; available '
                   'steps: [10, 20, 30]'),
      ('--k=0', 'Flag error: --k=0: ...'),
      (f'--k={num_params + 1}', f'Error: --k={num_params + 1} exceeds the '
                                f'{num_params:,} parameters of the model')]:
    proc = _command('analysis.hessian', f'--workdir={tmp_path}', flag)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    if message.endswith('...'):
      assert lines[0].startswith(message[:-3]), lines
    else:
      assert lines == [message]

  # kind='ggn': the top eigenvalues of J^T H_out J, against the dense matrix;
  # the library prints nothing unless given a log.
  capsys.readouterr()
  ggn = hs.checkpoint_spectrum(run, 20, k=3, kind='ggn', num_batches=1,
                               tol=1e-6)
  assert capsys.readouterr() == ('', '')
  assert ggn['kind'] == 'ggn'
  model_fn, out_loss = run.model_fn(model_state), run.output_loss_fn()
  np.testing.assert_allclose(out_loss(model_fn(params, batch), batch),
                             run.loss_fn(model_state)(params, batch),
                             rtol=1e-6)
  outputs = model_fn(params, batch)
  jac = jax.jacobian(lambda f: model_fn(unravel(f), batch).reshape(-1))(flat)
  h_out = jax.hessian(lambda o: out_loss(o.reshape(outputs.shape), batch))(
      outputs.reshape(-1))
  dense_ggn = np.linalg.eigvalsh(np.asarray(jac.T @ h_out @ jac, np.float64))
  np.testing.assert_allclose(ggn['eigenvalues'], dense_ggn[::-1][:3],
                             rtol=2e-3)
  assert dense_ggn[0] > -1e-5 * dense_ggn[-1]   # positive semi-definite
  assert ggn['eigenvalues'][0] != pytest.approx(dense[0], rel=1e-3)


def test_fisher_num_samples_reaches_the_command_and_estimates_the_ggn():
  """The Fisher is a Monte Carlo estimate of the GGN: ``num_samples`` draws
  per position (API, run inputs and ``--num_samples``), its error falling
  with more of them."""
  import types
  model_fn, out_loss = _model_fns()
  run = types.SimpleNamespace(options=types.SimpleNamespace(
      loss='cross_entropy'), model_fn=lambda state: model_fn)
  lik = hs.run_inputs(run, 'fisher', None, None, 16)['likelihood']
  assert lik.num_samples == 16 and lik.name == 'categorical'
  with pytest.raises(ValueError, match='num_samples'):
    hs.Likelihood('categorical', num_samples=0)
  with jax.enable_x64(True):
    (_, params, batches), _, _, _ = _exact('mlp')
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    v = unravel(jnp.asarray(np.random.default_rng(0).normal(size=flat.size)))
    ggn = _flat(hs.curvature('ggn', params, batches, model_fn=model_fn,
                             output_loss_fn=out_loss).matvec(v))
    errors = [np.linalg.norm(_flat(hs.curvature(
        'fisher', params, batches, model_fn=model_fn,
        likelihood=hs.Likelihood('categorical', num_samples=s)).matvec(v))
                                   - ggn) / np.linalg.norm(ggn)
              for s in (1, 256)]
  assert errors[1] < errors[0] / 4, errors
  proc = _command('analysis.hessian', '--helpfull')
  assert '--num_samples' in proc.stdout, proc.stderr
