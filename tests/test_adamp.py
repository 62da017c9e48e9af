"""Tests of dynamics.optim.adamp against the AdamP/SGDP reference semantics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dynamics.optim.adamp import (ProjectionAxes, adamp, flax_projection_axes,
                                  scale_by_adam_reference, scale_by_projection,
                                  sgdp)

jax.config.update('jax_numpy_rank_promotion', 'raise')


# ----------------------------------------------------------------------------
# The update rule written out by hand, in PyTorch layout (channels on axis 0),
# one parameter at a time, as the authors' loop does.


def _torch_cosine(x, y, eps):
  nx = np.maximum(np.linalg.norm(x, axis=1), eps)
  ny = np.maximum(np.linalg.norm(y, axis=1), eps)
  return np.abs(np.sum(x * y, axis=1)) / (nx * ny)


def _ref_projection(p, g, perturb, delta, wd_ratio, eps):
  """Returns (perturb, wd, branch) with branch in {'channel', 'layer', None}."""
  for branch, view in (('channel', lambda x: x.reshape(x.shape[0], -1)),
                       ('layer', lambda x: x.reshape(1, -1))):
    cos = _torch_cosine(view(g), view(p), eps)
    if cos.max() < delta / np.sqrt(view(p).shape[1]):
      norms = np.linalg.norm(view(p), axis=1) + eps
      p_n = p / norms.reshape([-1] + [1] * (p.ndim - 1))
      dots = np.sum(view(p_n * perturb), axis=1).reshape([-1] + [1] * (p.ndim - 1))
      return perturb - p_n * dots, wd_ratio, branch
  return perturb, 1.0, None


def _ref_adamp_step(p, g, st, lr, b1, b2, eps, wd, delta, wd_ratio, nesterov):
  st['step'] += 1
  bc1, bc2 = 1 - b1**st['step'], 1 - b2**st['step']
  st['m'] = b1 * st['m'] + (1 - b1) * g
  st['v'] = b2 * st['v'] + (1 - b2) * g * g
  denom = np.sqrt(st['v']) / np.sqrt(bc2) + eps
  num = b1 * st['m'] + (1 - b1) * g if nesterov else st['m']
  perturb, ratio, branch = num / denom, 1.0, None
  if p.ndim > 1:
    perturb, ratio, branch = _ref_projection(p, g, perturb, delta, wd_ratio, eps)
  p = p * (1 - lr * wd * ratio)
  return p - lr / bc1 * perturb, branch


def _ref_sgdp_step(p, g, st, lr, momentum, dampening, wd, nesterov, eps, delta,
                   wd_ratio):
  st['buf'] = momentum * st['buf'] + (1 - dampening) * g
  d_p = g + momentum * st['buf'] if nesterov else st['buf']
  ratio, branch = 1.0, None
  if p.ndim > 1:
    d_p, ratio, branch = _ref_projection(p, g, d_p, delta, wd_ratio, eps)
  p = p * (1 - lr * wd * ratio / (1 - momentum))
  return p - lr * d_p, branch


def _gradient_for(p_torch, kind, rng):
  """A gradient that triggers the channel test, the layer test, or neither."""
  r = rng.normal(size=p_torch.shape)
  flat_p, flat_r = p_torch.reshape(len(p_torch), -1), r.reshape(len(r), -1)
  if kind == 'channel':  # orthogonal to every channel of p
    coef = np.sum(flat_p * flat_r, 1, keepdims=True) / np.sum(flat_p**2, 1,
                                                             keepdims=True)
    return (flat_r - coef * flat_p).reshape(p_torch.shape)
  if kind == 'layer':  # orthogonal to p as a whole only
    return r - p_torch * np.sum(p_torch * r) / np.sum(p_torch**2)
  return r + 0.5 * p_torch  # well aligned: no projection


# Flax layout <-> PyTorch layout for a Dense and a Conv kernel.
_LAYOUTS = {
    'dense': ((3, 5), lambda k: k.T, lambda t: t.T),
    'conv': ((2, 2, 3, 4), lambda k: k.transpose(3, 2, 0, 1),
             lambda t: t.transpose(2, 3, 1, 0)),
}


@pytest.mark.parametrize('nesterov', [False, True])
def test_adamp_matches_reference_steps(nesterov):
  hyper = dict(lr=0.05, b1=0.9, b2=0.99, eps=1e-8, wd=0.1, delta=0.1,
               wd_ratio=0.1)
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    params = {name: rng.normal(size=shape) for name, (shape, _, _) in
              _LAYOUTS.items()}
    params['bias'] = rng.normal(size=(4,))
    tx = adamp(hyper['lr'], hyper['b1'], hyper['b2'], hyper['eps'],
               hyper['wd'], hyper['delta'], hyper['wd_ratio'], nesterov)
    params_j = jax.tree.map(jnp.asarray, params)
    state = tx.init(params_j)
    update = jax.jit(tx.update)
    ref = {name: {'step': 0, 'm': 0.0, 'v': 0.0} for name in params}
    branches = []
    for kind in ('channel', 'layer', 'none', 'channel', 'layer'):
      grads = {}
      for name, (_, to_torch, to_flax) in _LAYOUTS.items():
        p_t = to_torch(params[name])
        g_t = _gradient_for(p_t, kind, rng)
        grads[name] = to_flax(g_t)
        new_t, branch = _ref_adamp_step(p_t, g_t, ref[name], nesterov=nesterov,
                                        **hyper)
        branches.append(branch)
        params[name] = to_flax(new_t)
      grads['bias'] = rng.normal(size=(4,))
      params['bias'], branch = _ref_adamp_step(params['bias'], grads['bias'],
                                               ref['bias'], nesterov=nesterov,
                                               **hyper)
      assert branch is None  # 1-D parameters are never projected
      updates, state = update(jax.tree.map(jnp.asarray, grads), state, params_j)
      params_j = optax.apply_updates(params_j, updates)
      for name in params:
        np.testing.assert_allclose(params_j[name], params[name], rtol=1e-10,
                                   atol=1e-12)
    # The hand-made gradients exercised every branch of the reference.
    assert {'channel', 'layer', None} <= set(branches)


def test_sgdp_matches_reference_steps():
  hyper = dict(lr=0.1, momentum=0.9, dampening=0.1, wd=1e-2, nesterov=True,
               eps=1e-8, delta=0.1, wd_ratio=0.1)
  rng = np.random.default_rng(1)
  shape, to_torch, to_flax = _LAYOUTS['conv']
  with jax.enable_x64(True):
    p = rng.normal(size=shape)
    tx = sgdp(hyper['lr'], hyper['momentum'], hyper['dampening'], hyper['wd'],
              hyper['nesterov'], hyper['eps'], hyper['delta'], hyper['wd_ratio'])
    p_j = jnp.asarray(p)
    state = tx.init(p_j)
    ref = {'buf': 0.0}
    branches = []
    for kind in ('channel', 'none', 'layer', 'channel'):
      g_t = _gradient_for(to_torch(p), kind, rng)
      new_t, branch = _ref_sgdp_step(to_torch(p), g_t, ref, **hyper)
      branches.append(branch)
      p = to_flax(new_t)
      updates, state = tx.update(jnp.asarray(to_flax(g_t)), state, p_j)
      p_j = optax.apply_updates(p_j, updates)
      np.testing.assert_allclose(p_j, p, rtol=1e-10, atol=1e-12)
    assert branches == ['channel', None, 'layer', 'channel']


def test_projected_update_is_orthogonal_to_weight():
  rng = np.random.default_rng(2)
  w = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  # A gradient orthogonal to every output channel (column) of w.
  r = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  g = r - w * jnp.sum(w * r, 0, keepdims=True) / jnp.sum(w * w, 0, keepdims=True)
  tx = scale_by_projection(scale_by_adam_reference(), delta=0.1)
  u_adam, _ = scale_by_adam_reference().update(g, scale_by_adam_reference().init(w))
  u, _ = tx.update(g, tx.init(w), w)
  # Adam's per-coordinate scaling creates a radial part; the projection removes it.
  radial_before = jnp.abs(jnp.sum(w * u_adam, 0)) / jnp.linalg.norm(w, axis=0)
  radial_after = jnp.abs(jnp.sum(w * u, 0)) / jnp.linalg.norm(w, axis=0)
  assert float(jnp.max(radial_before)) > 0.5
  np.testing.assert_allclose(radial_after, 0.0, atol=1e-6)


def test_delta_zero_equals_adamw():
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    params = {'k': jnp.asarray(rng.normal(size=(4, 3))),
              'b': jnp.asarray(rng.normal(size=(3,)))}
    tx_p = adamp(1e-2, b1=0.8, b2=0.99, weight_decay=0.1, delta=0.0)
    tx_w = optax.adamw(1e-2, b1=0.8, b2=0.99, weight_decay=0.1)
    p1, p2 = params, params
    s1, s2 = tx_p.init(p1), tx_w.init(p2)
    for _ in range(5):
      # Gradients orthogonal to the weight: AdamP with delta > 0 would project.
      g = jax.tree.map(
          lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
      g['k'] = g['k'] - p1['k'] * jnp.sum(g['k'] * p1['k']) / jnp.sum(p1['k']**2)
      u1, s1 = tx_p.update(g, s1, p1)
      u2, s2 = tx_w.update(g, s2, p2)
      p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    for name in params:
      np.testing.assert_allclose(p1[name], p2[name], rtol=1e-6, atol=1e-6)
    # And delta > 0 does differ on that trajectory (the test can fail).
    tx_on = adamp(1e-2, b1=0.8, b2=0.99, weight_decay=0.1, delta=0.1)
    u_on, _ = tx_on.update(g, tx_on.init(p1), p1)
    u_off, _ = tx_w.update(g, tx_w.init(p1), p1)
    assert float(jnp.max(jnp.abs(u_on['k'] - u_off['k']))) > 1e-4


def test_one_dim_parameters_never_projected():
  w = jnp.array([1.0, 0.0, 0.0])
  g = jnp.array([0.0, 1.0, 1.0])  # orthogonal: would be projected if 2-D
  tx = adamp(0.1, delta=10.0, weight_decay=0.5)
  ref = optax.adamw(0.1, weight_decay=0.5)
  u, _ = tx.update(g, tx.init(w), w)
  u_ref, _ = ref.update(g, ref.init(w), w)
  np.testing.assert_allclose(u, u_ref, rtol=1e-6)


def test_stacked_parameters_projected_per_layer():
  rng = np.random.default_rng(4)
  w = jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32)
  g0 = _gradient_for(np.asarray(w[0]).T, 'channel', rng).T
  g1 = _gradient_for(np.asarray(w[1]).T, 'none', rng).T
  g = jnp.asarray(np.stack([g0, g1]), jnp.float32)
  rule = lambda path, x: ProjectionAxes(channel_axes=(2,), batch_axes=(0,))
  tx = adamp(0.1, weight_decay=0.1, projection_axes=rule)
  u, _ = tx.update(g, tx.init(w), w)
  single = adamp(0.1, weight_decay=0.1)
  for i in range(2):
    u_i, _ = single.update(g[i], single.init(w[i]), w[i])
    np.testing.assert_allclose(u[i], u_i, rtol=1e-5, atol=1e-7)
  # Layer 0 was projected, layer 1 was not: the two differ from plain AdamW.
  plain = optax.adamw(0.1, weight_decay=0.1)
  u_plain, _ = plain.update(g, plain.init(w), w)
  assert float(jnp.max(jnp.abs(u[0] - u_plain[0]))) > 1e-3
  np.testing.assert_allclose(u[1], u_plain[1], rtol=1e-5, atol=1e-7)


def test_flax_projection_axes_mapping():

  class Net(nn.Module):

    @nn.compact
    def __call__(self, tokens):
      x = nn.Embed(7, 4, name='embed')(tokens)
      x = nn.DenseGeneral((3, 2, 2), name='qkv')(x)
      x = nn.DenseGeneral(4, axis=(-3, -2, -1), name='out')(x)
      x = nn.Conv(5, (2,), name='conv')(x)
      return nn.LayerNorm(name='norm')(nn.Dense(3, name='dense')(x))

  params = Net().init(jax.random.PRNGKey(0), jnp.zeros((1, 3), jnp.int32))['params']
  axes = jax.tree_util.tree_map_with_path(flax_projection_axes, params)
  assert axes['embed']['embedding'] == ProjectionAxes((0,))
  assert axes['qkv']['kernel'] == ProjectionAxes((1, 2, 3))
  assert axes['out']['kernel'] == ProjectionAxes((3,))
  assert axes['conv']['kernel'] == ProjectionAxes((2,))
  assert axes['dense']['kernel'] == ProjectionAxes((1,))
  for leaf in (axes['norm']['scale'], axes['dense']['bias'], axes['qkv']['bias']):
    assert leaf is None


def _scale_invariant_loss(w, x, y):
  h = x @ w
  h = (h - h.mean(0, keepdims=True)) / jnp.sqrt(h.var(0, keepdims=True) + 1e-5)  # batch norm: w is scale-free
  return jnp.mean((h - y) ** 2)


def _norm_growth(tx, steps=150):
  key_w, key_x, key_y = jax.random.split(jax.random.PRNGKey(0), 3)
  w0 = jax.random.normal(key_w, (8, 4)) / jnp.sqrt(8.0)
  x = jax.random.normal(key_x, (64, 8))
  y = jax.random.normal(key_y, (64, 4))

  def step(carry, _):
    w, s = carry
    g = jax.grad(_scale_invariant_loss)(w, x, y)
    u, s = tx.update(g, s, w)
    return (optax.apply_updates(w, u), s), None

  (w, _), _ = jax.lax.scan(step, (w0, tx.init(w0)), None, length=steps)
  return float(jnp.linalg.norm(w) / jnp.linalg.norm(w0) - 1)


def test_weight_norm_grows_less_than_adam_and_sgd():
  # The paper's central claim: on scale-invariant weights the projection slows
  # the norm growth that momentum causes.
  growth_adam = _norm_growth(optax.adam(0.05))
  growth_adamp = _norm_growth(adamp(0.05))
  growth_sgd = _norm_growth(optax.sgd(0.5, momentum=0.9))
  growth_sgdp = _norm_growth(sgdp(0.5, momentum=0.9))
  # Measured: Adam +93%, AdamP +11%; SGD +323%, SGDP +19%.
  assert growth_adam > 0.2 and growth_sgd > 0.2
  assert growth_adamp < 0.3 * growth_adam
  assert growth_sgdp < 0.3 * growth_sgd


@pytest.mark.parametrize('factory, kwargs, name', [
    (adamp, dict(learning_rate=-1.0), 'learning_rate'),
    (adamp, dict(learning_rate=optax.constant_schedule(-0.1)), 'learning_rate'),
    (adamp, dict(learning_rate=0.1, b1=1.0), 'b1'),
    (adamp, dict(learning_rate=0.1, b2=-0.1), 'b2'),
    (adamp, dict(learning_rate=0.1, delta=-1.0), 'delta'),
    (adamp, dict(learning_rate=0.1, weight_decay=-1.0), 'weight_decay'),
    (sgdp, dict(learning_rate=-0.1), 'learning_rate'),
    (sgdp, dict(learning_rate=0.1, momentum=1.0), 'momentum'),
    (sgdp, dict(learning_rate=0.1, dampening=1.5), 'dampening'),
    (sgdp, dict(learning_rate=0.1, wd_ratio=-1.0), 'wd_ratio'),
])
def test_bad_hyperparameters_raise(factory, kwargs, name):
  with pytest.raises(ValueError, match=name):
    factory(**kwargs)
