"""Tests of dynamics.optim.soap against the authors' update rule by hand.

The multi-device check (state laid out like the parameters, sharded training
equal to single-device training) runs in one subprocess with 8 CPU devices:
this file run as a script with ``--child`` (see ``tests/host_devices.py``).
"""

import functools
import json
import os
import sys

import jax

jax.config.update('jax_numpy_rank_promotion', 'raise')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from configs import wsd  # noqa: E402
from dynamics import errors, optim  # noqa: E402
from dynamics.optim.soap import ScaleBySoapState, soap  # noqa: E402
import host_devices  # noqa: E402


def _reference(w0, grads, lr, b1=0.95, b2=0.95, shampoo_beta=None, eps=1e-8,
               wd=0.0, freq=10, axes=(True, True), normalize=False,
               correct_bias=True, first_bases=None):
  """SOAP on one parameter, written out in NumPy (float64) from the reference.

  ``axes[k]``: whether axis ``k`` of the (1-D or 2-D) parameter has a Shampoo
  factor. ``lr(k)`` is the rate at call ``k``. ``first_bases`` replaces the
  first ``eigh`` bases (where a rank-deficient factor leaves them arbitrary).
  Returns the parameter after every call.
  """
  sb = b2 if shampoo_beta is None else shampoo_beta
  w = np.array(w0, np.float64)
  m, v = np.zeros_like(w), np.zeros_like(w)
  eye = [np.eye(s) for s in w.shape]
  P = [None] * w.ndim
  Q = [None] * w.ndim

  def basis(k):
    return Q[k] if axes[k] else eye[k]

  def rotate(x):         # Q_L^T X Q_R  (Q^T x for a vector)
    return (basis(0).T @ x @ basis(1) if x.ndim == 2 else basis(0).T @ x)

  def rotate_back(x):    # Q_L X Q_R^T
    return (basis(0) @ x @ basis(1).T if x.ndim == 2 else basis(0) @ x)

  def outers(g):
    if g.ndim == 1:
      return [np.outer(g, g)]
    return [g @ g.T, g.T @ g]

  out = []
  for call, g in enumerate(grads):
    g = np.asarray(g, np.float64)
    if call == 0:
      for k, o in enumerate(outers(g)):
        if axes[k]:
          P[k] = (1 - sb) * o
          vals, vecs = np.linalg.eigh(P[k])
          Q[k] = vecs[:, ::-1]
          if first_bases is not None:
            Q[k] = first_bases[k]
      out.append(w.copy())
      continue
    t = call
    r = rotate(g)
    m = b1 * m + (1 - b1) * r
    v = b2 * v + (1 - b2) * r ** 2
    d = rotate_back(m / (np.sqrt(v) + eps))
    if normalize:
      d = d / (1e-30 + np.sqrt(np.mean(d ** 2)))
    c = np.sqrt(1 - b2 ** t) / (1 - b1 ** t) if correct_bias else 1.0
    w = w - lr(call) * c * d
    w = w - lr(call) * wd * w
    for k, o in enumerate(outers(g)):
      if axes[k]:
        P[k] = sb * P[k] + (1 - sb) * o
    if t % freq == 0:
      m = rotate_back(m)
      for k in range(w.ndim):
        if not axes[k]:
          continue
        est = np.diag(Q[k].T @ P[k] @ Q[k])
        order = np.argsort(-est)
        v = np.take(v, order, axis=k)
        Q[k] = np.linalg.qr(P[k] @ Q[k][:, order])[0]
      m = rotate(m)
    out.append(w.copy())
  return out


def _run(tx, params, grads):
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for g in grads:
    u, state = update(g, state, params)
    params = jax.tree.map(lambda p, x: p + x, params, u)
    out.append(params)
  return out, state


def _grads(shapes, calls, seed=0):
  rng = np.random.default_rng(seed)
  return [{k: rng.normal(size=s) for k, s in shapes.items()}
          for _ in range(calls)]


OPTIONS = {
    'defaults': {},
    'options': dict(shampoo_beta=0.8, normalize=True, correct_bias=False),
}


@pytest.mark.parametrize('options', OPTIONS)
def test_matches_the_rule_by_hand_with_a_refresh(options):
  """A matrix and a vector (plain Adam, first step skipped), five calls with
  a schedule and weight decay: the first builds the bases, the others step;
  the bases are refreshed (power iteration + QR) after steps 2 and 4."""
  ref_opts = OPTIONS[options]
  kw = dict(ref_opts)
  kw['normalize_grads'] = kw.pop('normalize', False)
  shapes = {'w': (4, 3), 'b': (3,)}
  rng = np.random.default_rng(1)
  w0 = {k: rng.normal(size=s) for k, s in shapes.items()}
  grads = _grads(shapes, 5)
  lr = lambda k: 0.05 * (1 + k)
  with jax.enable_x64(True):
    tx = soap(lr, b1=0.9, b2=0.99, weight_decay=0.1, precondition_frequency=2,
              **kw)
    got, _ = _run(tx, jax.tree.map(jnp.asarray, w0),
                  [jax.tree.map(jnp.asarray, g) for g in grads])
  for name, axes in (('w', (True, True)), ('b', (False,))):
    want = _reference(w0[name], [g[name] for g in grads], lr, b1=0.9, b2=0.99,
                      wd=0.1, freq=2, axes=axes, **ref_opts)
    for k, (a, b) in enumerate(zip(got, want)):
      np.testing.assert_allclose(np.asarray(a[name]), b, rtol=0, atol=1e-6,
                                 err_msg=f'{name} after call {k}')
  assert np.abs(want[-1] - w0['b']).max() > 0.1  # It did move.


def test_float32_follows_the_float64_rule():
  shapes = {'w': (5, 4)}
  w0 = {'w': np.zeros((5, 4))}
  grads = _grads(shapes, 5, seed=3)
  got, _ = _run(soap(0.1, weight_decay=0.0, precondition_frequency=2),
                jax.tree.map(jnp.float32, w0),
                [jax.tree.map(jnp.float32, g) for g in grads])
  want = _reference(w0['w'], [g['w'] for g in grads], lambda k: 0.1, freq=2)
  np.testing.assert_allclose(np.asarray(got[-1]['w']), want[-1], atol=1e-4)


def test_precondition_1d_with_a_refresh():
  """A vector with its own full factor: ``Q^T g``, Adam, ``Q (.)``; the first
  basis is taken from the state (a rank-one factor leaves it arbitrary)."""
  grads = _grads({'b': (3,)}, 5, seed=2)
  with jax.enable_x64(True):
    tx = soap(0.1, weight_decay=0.0, precondition_frequency=2,
              precondition_1d=True)
    params = {'b': jnp.zeros(3)}
    state = tx.init(params)
    _, first = tx.update(jax.tree.map(jnp.asarray, grads[0]), state, params)
    q0 = np.asarray(first[0].bases['b'][0])
    got, _ = _run(tx, params, [jax.tree.map(jnp.asarray, g) for g in grads])
  want = _reference(np.zeros(3), [g['b'] for g in grads], lambda k: 0.1,
                    freq=2, axes=(True,), first_bases=[q0])
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a['b']), b, atol=1e-6)


def test_the_first_call_only_builds_the_preconditioner():
  rng = np.random.default_rng(4)
  params = {'w': jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
  g = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  tx = soap(0.1, b2=0.9, weight_decay=0.5)
  u, (s, _) = tx.update({'w': g}, tx.init(params), params)
  assert float(jnp.abs(u['w']).max()) == 0.0  # No step, no weight decay.
  assert int(s.count) == 1
  assert float(jnp.abs(s.mu['w']).max()) == 0 == float(jnp.abs(s.nu['w']).max())
  (L, R), (QL, QR) = s.factors['w'], s.bases['w']
  np.testing.assert_allclose(L, 0.1 * g @ g.T, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(R, 0.1 * g.T @ g, rtol=1e-5, atol=1e-6)
  for P, Q in ((L, QL), (R, QR)):
    np.testing.assert_allclose(Q.T @ Q, np.eye(len(Q)), atol=1e-5)
    lam = np.diag(Q.T @ P @ Q)
    np.testing.assert_allclose(Q.T @ P @ Q, np.diag(lam), atol=1e-5)
    assert np.all(np.diff(lam) <= 1e-6), lam  # Descending.


def test_axes_above_max_precond_dim_get_the_identity():
  shapes = {'w': (3, 6), 'b': (6,)}
  grads = _grads(shapes, 4, seed=5)
  w0 = {k: np.zeros(s) for k, s in shapes.items()}
  with jax.enable_x64(True):
    tx = soap(0.1, weight_decay=0.0, precondition_frequency=2,
              max_precond_dim=5, precondition_1d=True)
    got, state = _run(tx, jax.tree.map(jnp.asarray, w0),
                      [jax.tree.map(jnp.asarray, g) for g in grads])
  soap_state = state[0]
  assert [f.shape for f in soap_state.factors['w']] == [(3, 3)]
  assert soap_state.factors['b'] == ()  # Longer than 5: not preconditioned.
  want = _reference(w0['w'], [g['w'] for g in grads], lambda k: 0.1, freq=2,
                    axes=(True, False))
  np.testing.assert_allclose(np.asarray(got[-1]['w']), want[-1], atol=1e-6)


def test_merge_dims_preconditions_the_merged_matrix():
  """(2, 2, 5) with max_precond_dim=6 is seen as (4, 5)."""
  grads = _grads({'w': (2, 2, 5)}, 4, seed=6)
  with jax.enable_x64(True):
    tx = soap(0.1, weight_decay=0.0, precondition_frequency=2,
              max_precond_dim=6, merge_dims=True)
    got, state = _run(tx, {'w': jnp.zeros((2, 2, 5))},
                      [jax.tree.map(jnp.asarray, g) for g in grads])
  assert [f.shape for f in state[0].factors['w']] == [(4, 4), (5, 5)]
  want = _reference(np.zeros((4, 5)), [g['w'].reshape(4, 5) for g in grads],
                    lambda k: 0.1, freq=2)
  np.testing.assert_allclose(np.asarray(got[-1]['w']).reshape(4, 5), want[-1],
                             atol=1e-6)


def _smoke(**soap_fields):
  c = wsd.get_config('smoke')
  c.optimizer.name = 'soap'
  c.optimizer.learning_rate = 3e-3
  for k, v in soap_fields.items():
    c.optimizer.soap[k] = v
  return c


def test_trains_the_smoke_config():
  from dynamics.runs import Run
  run = Run(_smoke(precondition_frequency=2))
  state = run.init_state()
  losses = []
  for i in range(6):
    batch = jax.tree.map(jnp.asarray, run.dataset.train_batch(i % 2))
    state, m = run.train_step(state, batch)
    losses.append(float(m['loss']))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize('field,value', [
    ('precondition_frequency', 0), ('shampoo_beta', 1.0),
    ('max_precond_dim', 0), ('b1', 1.5)])
def test_bad_section_values_name_the_field(field, value):
  c = _smoke()
  with c.unlocked():
    c.optimizer.soap[field] = value
  with pytest.raises(errors.ConfigError, match=f'optimizer.soap.{field}'):
    optim.check(c)


# ---------------------------------------------------------------------------
# Sharding (subprocess with 8 CPU devices).


def _mlp_config():
  c = _smoke(precondition_frequency=2, eps=1e-6)
  c.model.name, c.data.name = 'mlp', 'teacher_student'
  # Every matrix 16 x 16 (sharded at fsdp_min_size=256), with full-rank
  # factors (batch >= 16).
  c.model.hidden_sizes = (16, 16)
  c.data.input_dim = c.data.output_dim = 16
  c.data.batch_size = 64
  c.num_steps, c.schedule.warmup_steps = 10, 1
  return c


def _child_main():
  from dynamics import runs
  from dynamics import sharding as sharding_lib
  from dynamics import step as step_lib
  assert jax.device_count() == 8, jax.devices()
  config = _mlp_config()
  parts = runs.build(config)
  host = jax.device_get(runs.init_state(config, parts))
  batches = [parts.dataset.train_batch(i) for i in range(4)]

  def run(shardings, batches):
    fn = step_lib.make_train_step(parts.model, parts.tx, parts.schedule,
                                  parts.options, shardings)
    state = shardings.put_state(host) if shardings else jax.tree.map(
        jnp.asarray, host)
    put = shardings.put_batch if shardings else (
        lambda b: jax.tree.map(jnp.asarray, b))
    for b in batches:
      state, _ = fn(state, put(b))
    return jax.device_get(state) if not shardings else state

  def distance(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - y)))
               for x, y in zip(jax.tree.leaves(a.params),
                               jax.tree.leaves(b.params)))

  ref = run(None, batches)
  # The noise floor: the same run with its inputs moved by float32 round-off.
  # Near-degenerate eigenvalues of the factors make the eigenbases (so the
  # steps) that sensitive; another layout's summation order is such a change.
  rng = np.random.default_rng(0)
  nudged = [dict(b, inputs=(b['inputs'] * (1 + 2e-7 * rng.choice(
      [-1, 1], size=b['inputs'].shape))).astype(b['inputs'].dtype))
            for b in batches]
  floor = distance(run(None, nudged), ref)
  mesh = sharding_lib.make_mesh(ml_collections.ConfigDict(
      {'data': 2, 'fsdp': 4, 'fsdp_min_size': 256}))
  sh = sharding_lib.TrainShardings.create(mesh, host, 256)
  got = run(sh, batches)
  soap_state, = [s for s in jax.tree.leaves(
      got.opt_state, is_leaf=lambda s: isinstance(s, ScaleBySoapState))
                 if isinstance(s, ScaleBySoapState)]
  spec = lambda x: str(x.sharding.spec)
  print('RESULT ' + json.dumps({
      'param_specs': jax.tree.map(spec, got.params),
      'mu_specs': jax.tree.map(spec, soap_state.mu),
      'basis_specs': jax.tree.map(spec, soap_state.bases),
      'err': distance(got, ref), 'floor': floor,
      'moved': distance(ref, host)}), flush=True)


@functools.lru_cache(maxsize=None)
def _child_results():
  return host_devices.child_results(__file__, 8)


def test_state_is_sharded_like_the_parameters_and_trains_the_same():
  r = _child_results()
  assert r['mu_specs'] == r['param_specs']  # Moments: the params' layout.
  specs = set(jax.tree.leaves(r['basis_specs']))
  # Each 16 x 16 basis (256 entries) is split over fsdp like a 16 x 16 kernel.
  assert specs == {"P('fsdp', None)"}, specs
  assert r['moved'] > 1e-3, r
  # Sharded training moves the weights no further from single-device
  # training than float32 round-off of the inputs does.
  assert r['err'] <= 3 * r['floor'] + 1e-6, r


if __name__ == '__main__' and '--child' in sys.argv:
  _child_main()
