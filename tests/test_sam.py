"""Tests of dynamics.optim.sam: SAM, ASAM, SAM-ON, m-sharpness, BatchNorm."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base, eos
from dynamics import config_lib
from dynamics.models import CNN, MLP, ResNet, Transformer
from dynamics.optim.sam import (asam_scaled, norm_mask, sam_gradient, sam_mask,
                                sam_perturbation)
from dynamics.runs import Run
from dynamics.step import StepOptions
from dynamics.types import param_names

jax.config.update('jax_numpy_rank_promotion', 'raise')


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {'dense': {'kernel': jnp.asarray(rng.normal(size=(3, 2))),
                      'bias': jnp.asarray(rng.normal(size=(2,)))},
            'norm': {'scale': jnp.asarray(rng.normal(size=(2,)))}}
  batch = {'x': jnp.asarray(rng.normal(size=(8, 3))),
           'y': jnp.asarray(rng.normal(size=(8, 2)))}

  def loss_fn(p, b):
    h = jnp.tanh(b['x'] @ p['dense']['kernel'] + p['dense']['bias'][None])
    return jnp.mean((h * p['norm']['scale'][None] - b['y']) ** 2)

  return params, batch, loss_fn


def test_gradient_is_gradient_at_hand_perturbed_point():
  with jax.enable_x64(True):
    params, batch, loss_fn = _problem()
    rho = 0.3
    loss, g_sam = jax.jit(functools.partial(sam_gradient, loss_fn, rho=rho))(
        params, batch)
    g = jax.grad(loss_fn)(params, batch)
    g_flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
    eps_hat = jax.tree.map(lambda x: rho * x / np.linalg.norm(g_flat), g)
    perturbed = jax.tree.map(lambda w, e: w + e, params, eps_hat)
    expected = jax.grad(loss_fn)(perturbed, batch)
    np.testing.assert_allclose(loss, loss_fn(params, batch), rtol=1e-12)
    for a, b, plain in zip(jax.tree.leaves(g_sam), jax.tree.leaves(expected),
                           jax.tree.leaves(g)):
      np.testing.assert_allclose(a, b, rtol=1e-10)
      assert not np.allclose(a, plain)  # the perturbation mattered


def test_rho_zero_is_plain_gradient():
  params, batch, loss_fn = _problem()
  loss, g_sam = sam_gradient(loss_fn, params, batch, rho=0.0)
  loss_ref, g = jax.value_and_grad(loss_fn)(params, batch)
  assert float(loss) == float(loss_ref)
  for a, b in zip(jax.tree.leaves(g_sam), jax.tree.leaves(g)):
    np.testing.assert_array_equal(a, b)


def test_asam_perturbation_norm_property():
  with jax.enable_x64(True):
    params, batch, loss_fn = _problem(1)
    g = jax.grad(loss_fn)(params, batch)
    rho, eta = 0.2, 0.01
    e = sam_perturbation(g, params, rho=rho, adaptive=True, eta=eta)
    # The official convention: kernels and scales by |w| + eta, biases by 1.
    scale = {'dense': {'kernel': jnp.abs(params['dense']['kernel']) + eta,
                       'bias': jnp.ones(2)},
             'norm': {'scale': jnp.abs(params['norm']['scale']) + eta}}
    # ||T_w^{-1} eps|| = rho, and eps is T_w^2 g up to a positive factor.
    inv = jax.tree.map(lambda x, t: x / t, e, scale)
    norm = np.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(inv)))
    np.testing.assert_allclose(norm, rho, rtol=1e-10)
    ratio = jax.tree.map(lambda x, t, gg: x / (t**2 * gg), e, scale, g)
    ratios = np.concatenate([np.ravel(r) for r in jax.tree.leaves(ratio)])
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-10)
    assert ratios[0] > 0
    # Plain SAM's perturbation is not T-normalized: the property is ASAM's.
    e_sam = sam_perturbation(g, params, rho=rho)
    inv_sam = jax.tree.map(lambda x, t: x / t, e_sam, scale)
    norm_sam = np.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(inv_sam)))
    assert abs(norm_sam - rho) > 1e-3


class _BiasLayerNormMLP(nn.Module):
  """Dense -> LayerNorm -> tanh -> Dense: kernels, biases, a scale, an offset."""

  @nn.compact
  def __call__(self, x):
    h = nn.tanh(nn.LayerNorm(name='norm')(nn.Dense(4, name='dense_0')(x)))
    return nn.Dense(2, name='head')(h)


def _asam_by_hand(grad_fn, params, batch, rho, eta, scaled):
  """The official ASAM ascent step (SamsungLabs/ASAM, asam.py), written out."""
  g = grad_fn(params, batch)
  names = param_names(params)
  g_leaves, treedef = jax.tree.flatten(g)
  w_leaves = jax.tree.leaves(params)
  t = [jnp.abs(w) + eta if scaled(n) else jnp.ones_like(w)
       for n, w in zip(names, w_leaves)]
  norm = np.sqrt(sum(float(jnp.sum((ti * gi) ** 2))
                     for ti, gi in zip(t, g_leaves)))
  eps = [rho * ti * ti * gi / norm for ti, gi in zip(t, g_leaves)]
  perturbed = treedef.unflatten([w + e for w, e in zip(w_leaves, eps)])
  return dict(zip(names, eps)), grad_fn(perturbed, batch)


def test_asam_follows_the_official_code_on_biases_and_layernorm():
  with jax.enable_x64(True):
    model = _BiasLayerNormMLP()
    rng = np.random.default_rng(6)
    batch = {'x': jnp.asarray(rng.normal(size=(8, 3))),
             'y': jnp.asarray(rng.normal(size=(8, 2)))}
    params = model.init(jax.random.PRNGKey(0), batch['x'])['params']
    params = jax.tree.map(lambda w: w.astype(jnp.float64), params)
    assert sorted(param_names(params)) == [
        'dense_0/bias', 'dense_0/kernel', 'head/bias', 'head/kernel',
        'norm/bias', 'norm/scale']
    # Flax initializes biases and LayerNorm offsets at exactly 0.
    assert float(jnp.abs(params['dense_0']['bias']).max()) == 0.0

    def loss_fn(p, b):
      return jnp.mean((model.apply({'params': p}, b['x']) - b['y']) ** 2)

    grad_fn = jax.jit(jax.grad(loss_fn))
    rho = 0.3
    weights = lambda name: name.split('/')[-1] in ('kernel', 'scale')
    eps_hand, expected = _asam_by_hand(grad_fn, params, batch, rho, 0.01,
                                       weights)
    _, g_asam = jax.jit(functools.partial(sam_gradient, loss_fn, rho=rho,
                                          adaptive=True))(params, batch)
    for a, b in zip(jax.tree.leaves(g_asam), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-10)
    eps = sam_perturbation(grad_fn(params, batch), params, rho=rho,
                           adaptive=True)
    for name, e in zip(param_names(eps), jax.tree.leaves(eps)):
      np.testing.assert_allclose(e, eps_hand[name], rtol=1e-10, atol=1e-15)
    # Zero-initialized biases and offsets are perturbed (T_w = 1 there).
    assert float(jnp.abs(eps['dense_0']['bias']).min()) > 0
    assert float(jnp.abs(eps['norm']['bias']).min()) > 0
    # The mask the convention uses, by name.
    assert param_names(params) == param_names(asam_scaled(params))
    assert [n for n, m in zip(param_names(params),
                              jax.tree.leaves(asam_scaled(params))) if m] == [
                                  n for n in param_names(params) if weights(n)]
    # The all-leaves variant is the same rule with every T_w = |w| + eta, and
    # differs from the default.
    eps_all, expected_all = _asam_by_hand(grad_fn, params, batch, rho, 0.01,
                                          lambda name: True)
    _, g_all = jax.jit(functools.partial(sam_gradient, loss_fn, rho=rho,
                                         adaptive=True, all_leaves=True))(
                                             params, batch)
    for a, b in zip(jax.tree.leaves(g_all), jax.tree.leaves(expected_all)):
      np.testing.assert_allclose(a, b, rtol=1e-10)
    assert not np.allclose(g_all['head']['bias'], g_asam['head']['bias'])


def test_asam_eta_defaults_to_the_official_value():
  params, batch, loss_fn = _problem(7)
  g = jax.grad(loss_fn)(params, batch)
  default = sam_perturbation(g, params, rho=0.1, adaptive=True)
  explicit = sam_perturbation(g, params, rho=0.1, adaptive=True, eta=0.01)
  zero = sam_perturbation(g, params, rho=0.1, adaptive=True, eta=0.0)
  for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(explicit)):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(default['dense']['kernel'], zero['dense']['kernel'])
  assert base.get_config().optimizer.sam.eta == 0.01
  assert StepOptions().sam.eta == 0.01


def test_unnormalized_sam_is_gradient_at_w_plus_rho_g():
  with jax.enable_x64(True):
    params, batch, loss_fn = _problem(8)
    rho = 0.05
    _, g_usam = jax.jit(functools.partial(sam_gradient, loss_fn, rho=rho,
                                          normalize=False))(params, batch)
    g = jax.grad(loss_fn)(params, batch)
    expected = jax.grad(loss_fn)(
        jax.tree.map(lambda w, gg: w + rho * gg, params, g), batch)
    for a, b in zip(jax.tree.leaves(g_usam), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-10)
    _, g_sam = sam_gradient(loss_fn, params, batch, rho=rho)
    assert not np.allclose(g_sam['dense']['kernel'], g_usam['dense']['kernel'])


@pytest.mark.parametrize('factor, stable', [(0.98, True), (1.02, False)])
def test_unnormalized_sam_edge_of_stability_on_a_quadratic(factor, stable):
  # L = lam/2 w^2: GD on the unnormalized SAM gradient multiplies w by
  # 1 - lr lam (1 + rho lam) per step, stable iff lr lam (1 + rho lam) < 2.
  lam, rho = 10.0, 0.05
  lr = factor * 2 / (lam * (1 + rho * lam))
  loss_fn = lambda w, b: 0.5 * lam * jnp.sum(w ** 2)

  def step(w, _):
    _, g = sam_gradient(loss_fn, w, None, rho=rho, normalize=False)
    return w - lr * g, None
  w = jax.lax.scan(step, jnp.ones(1), None, length=200)[0]
  assert (abs(float(w[0])) < 0.5) == stable


def test_train_step_reads_unnormalized_sam_and_asam_leaves_from_config():
  config = eos.get_config('smoke')
  config.optimizer.sam.rho = 0.05
  config.optimizer.sam.normalize = False
  run = Run(config)
  assert not run.options.sam.normalize and not run.options.sam.all_leaves
  assert run.options.sam.rho == 0.05
  state = run.init_state()
  params = state.params
  batch = jax.tree.map(jnp.asarray, run.dataset.train_batch(0))
  loss_fn = run.loss_fn(state.model_state)
  g = jax.grad(loss_fn)(params, batch)
  g_sam = jax.grad(loss_fn)(jax.tree.map(lambda w, gg: w + 0.05 * gg, params,
                                         g), batch)
  lr = config.optimizer.learning_rate
  expected = jax.tree.map(lambda w, gg: w - lr * gg, params, g_sam)
  new_state, _ = run.train_step(state, batch)
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_sam_on_changes_only_masked_leaves():
  with jax.enable_x64(True):
    params, batch, loss_fn = _problem(2)
    g = jax.grad(loss_fn)(params, batch)
    e = sam_perturbation(g, params, rho=0.1, mask=norm_mask)
    np.testing.assert_array_equal(e['dense']['kernel'], 0.0)
    np.testing.assert_array_equal(e['dense']['bias'], 0.0)
    # The norm is over the masked leaves only.
    np.testing.assert_allclose(jnp.linalg.norm(e['norm']['scale']), 0.1,
                               rtol=1e-9)
    _, g_on = sam_gradient(loss_fn, params, batch, rho=0.1, mask=norm_mask)
    perturbed = jax.tree.map(lambda w, d: w + d, params, e)
    expected = jax.grad(loss_fn)(perturbed, batch)
    for a, b in zip(jax.tree.leaves(g_on), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-10)
    # A pytree mask gives the same result as the mask function.
    _, g_tree = sam_gradient(loss_fn, params, batch, rho=0.1,
                             mask=norm_mask(params))
    for a, b in zip(jax.tree.leaves(g_on), jax.tree.leaves(g_tree)):
      np.testing.assert_array_equal(a, b)


def test_m_sharpness_averages_microbatch_sam_gradients():
  with jax.enable_x64(True):
    params, batch, loss_fn = _problem(3)
    loss, g = jax.jit(functools.partial(sam_gradient, loss_fn, rho=0.2,
                                        num_microbatches=4))(params, batch)
    single = jax.jit(functools.partial(sam_gradient, loss_fn, rho=0.2))
    parts = [single(params, jax.tree.map(lambda x: x[2 * i:2 * i + 2], batch))
             for i in range(4)]
    np.testing.assert_allclose(loss, np.mean([p[0] for p in parts]), rtol=1e-12)
    expected = jax.tree.map(lambda *xs: sum(xs) / 4, *[p[1] for p in parts])
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-10)
    # Different from the full-batch SAM gradient (the test can fail).
    _, g_full = single(params, batch)
    assert not np.allclose(g['dense']['kernel'], g_full['dense']['kernel'])


@pytest.mark.parametrize('num_microbatches', [1, 2])
def test_one_step_costs_two_forward_backward_passes(num_microbatches):
  params, batch, loss_fn = _problem(4)
  calls = []

  def counted(p, b):
    calls.append(1)
    return loss_fn(p, b)

  fn = jax.jit(functools.partial(sam_gradient, counted, rho=0.1,
                                 num_microbatches=num_microbatches))
  fn(params, batch)
  assert len(calls) == 2
  fn(params, batch)  # cached: no new trace
  assert len(calls) == 2


def test_batchnorm_statistics_come_from_unperturbed_pass():
  model = MLP(hidden_sizes=(4,), num_outputs=2, norm='batchnorm')
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(8, 2)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x)
  params, stats = variables['params'], variables['batch_stats']

  def loss_fn(p, b):
    out, new_state = model.apply({'params': p, 'batch_stats': stats}, b['x'],
                                 train=True, mutable=['batch_stats'])
    return jnp.mean((out - b['y']) ** 2), new_state['batch_stats']

  batch = {'x': x, 'y': y}
  (loss, new_stats), _ = jax.jit(functools.partial(
      sam_gradient, loss_fn, rho=0.5, has_aux=True))(params, batch)
  plain_loss, plain_stats = jax.jit(loss_fn)(params, batch)
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(new_stats), jax.tree.leaves(plain_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  # The perturbed pass would have produced different statistics.
  g = jax.jit(jax.grad(lambda p: loss_fn(p, batch)[0]))(params)
  e = sam_perturbation(g, params, rho=0.5)
  _, perturbed_stats = jax.jit(loss_fn)(jax.tree.map(jnp.add, params, e), batch)
  diffs = [float(jnp.max(jnp.abs(a - b))) for a, b in
           zip(jax.tree.leaves(perturbed_stats), jax.tree.leaves(plain_stats))]
  assert max(diffs) > 1e-4


# Every model in dynamics.models, with the number of normalization-parameter
# leaves its configuration implies (LayerNorm: scale+bias, RMSNorm: scale,
# BatchNorm: scale+bias, DyT: alpha+scale+bias, none: no parameters).
_MODELS = [
    ('transformer-layernorm', Transformer(vocab_size=11, d_model=8, num_layers=2,
                                          num_heads=2, max_len=4), 'tokens',
     (2 * 2 + 1) * 2),
    ('transformer-rmsnorm-qk', Transformer(vocab_size=11, d_model=8, num_layers=2,
                                           num_heads=2, max_len=4, norm='rmsnorm',
                                           qk_norm=True), 'tokens',
     (2 * 2 + 1) + 2 * 2),
    ('transformer-dyt', Transformer(vocab_size=11, d_model=8, num_layers=1,
                                    num_heads=2, max_len=4, norm='dyt'),
     'tokens', (2 + 1) * 3),
    ('transformer-none', Transformer(vocab_size=11, d_model=8, num_layers=1,
                                     num_heads=2, max_len=4, norm='none'),
     'tokens', 0),
    ('mlp-batchnorm', MLP(hidden_sizes=(4, 4), num_outputs=3,
                          norm='batchnorm'), 'vector', 2 * 2),
    ('mlp-none', MLP(hidden_sizes=(4,), num_outputs=3), 'vector', 0),
    ('cnn-batchnorm', CNN(channels=(2, 3), num_outputs=3), 'image', 2 * 2),
    ('cnn-layernorm', CNN(channels=(2,), num_outputs=3, norm='layernorm'),
     'image', 2),
    ('resnet', ResNet(channels=(2, 4), num_outputs=3), 'image',
     2 * (1 + 2 + 3)),
]


@pytest.mark.parametrize('name, model, kind, expected', _MODELS,
                         ids=[m[0] for m in _MODELS])
def test_norm_mask_on_every_model(name, model, kind, expected):
  inputs = {'tokens': jnp.zeros((1, 4), jnp.int32),
            'vector': jnp.zeros((1, 5)),
            'image': jnp.zeros((1, 4, 4, 1))}[kind]
  # Only shapes are needed; 'allow' keeps a model's own broadcasting (DyT's
  # scale * x) from failing this mask test under the suite's 'raise' setting.
  with jax.numpy_rank_promotion('allow'):
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               inputs))['params']
  mask = norm_mask(params)
  flat = jax.tree_util.tree_leaves_with_path(params)
  selected = [(path, leaf) for (path, leaf), m in
              zip(flat, jax.tree.leaves(mask)) if m]
  assert len(selected) == expected, name
  for path, leaf in selected:
    assert leaf.ndim <= 1, path  # scales, biases, DyT's alpha
    assert path[-1].key in ('scale', 'bias', 'alpha'), path
  # Kernels and embeddings are never selected.
  for (path, leaf), m in zip(flat, jax.tree.leaves(mask)):
    if path[-1].key in ('kernel', 'embedding', 'pos_embed'):
      assert not m, path


def test_sam_mask_names():
  assert sam_mask('all') is None
  assert sam_mask('norm') is norm_mask
  with pytest.raises(ValueError, match='mask'):
    sam_mask('bogus')


@pytest.mark.parametrize('kwargs, name', [
    (dict(rho=-0.1), 'rho'),
    (dict(rho=0.1, eta=-1.0), 'eta'),
    (dict(rho=0.1, num_microbatches=0), 'num_microbatches'),
    (dict(rho=0.1, num_microbatches=3), 'num_microbatches'),  # 8 % 3 != 0
])
def test_bad_arguments_raise(kwargs, name):
  params, batch, loss_fn = _problem()
  with pytest.raises(ValueError, match=name):
    sam_gradient(loss_fn, params, batch, **kwargs)


def test_config_rejects_a_negative_asam_eta():
  config = eos.get_config('smoke')
  config.optimizer.sam.eta = -0.01
  with pytest.raises(config_lib.ConfigError, match=r'optimizer\.sam\.eta=-0\.01'):
    config_lib.validate(config)
