"""Tests of dynamics.optim.sam: SAM, ASAM, SAM-ON, m-sharpness, BatchNorm."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics.models import CNN, MLP, ResNet, Transformer
from dynamics.optim.sam import norm_mask, sam_gradient, sam_mask, sam_perturbation

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
    scale = jax.tree.map(lambda w: jnp.abs(w) + eta, params)
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
