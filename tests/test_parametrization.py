"""Init and parametrization knobs: identity-style init, Fixup, NTK, muP's
readout, per-layer LR multipliers and the rotation probes."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from configs import base
from dynamics import models, parametrization
from dynamics.models import Knobs
from dynamics.models.cnn import ResidualBlock
from dynamics.models.transformer import Block

jax.config.update('jax_numpy_rank_promotion', 'raise')


def _block_out(block, x):
  variables = block.init(jax.random.PRNGKey(0), x)
  out = block.apply(variables, x)
  return np.asarray(out)


def test_identity_style_init_makes_each_residual_block_the_identity():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 16))
  for init, norm in (('zero', 'layernorm'), ('zero', 'dyt'),
                     ('fixup', 'rmsnorm'), ('fixup', 'none')):
    block = Block(num_heads=2, mlp_hidden=64, norm=norm,
                  knobs=Knobs(init=init), num_branches=4)
    np.testing.assert_array_equal(_block_out(block, x), x)
  # The default init is not the identity (the test can fail).
  assert not np.allclose(_block_out(Block(num_heads=2, mlp_hidden=64), x), x)
  # ResNet blocks, fed the non-negative activations a ReLU network gives them.
  img = jax.nn.relu(jax.random.normal(jax.random.PRNGKey(2), (2, 4, 4, 8)))
  for init, norm in (('zero', 'batchnorm'), ('zero', 'none'),
                     ('fixup', 'none')):
    block = ResidualBlock(8, norm=norm, knobs=Knobs(init=init))
    np.testing.assert_allclose(_block_out(block, img), img, atol=1e-6)
  assert not np.allclose(_block_out(ResidualBlock(8, norm='none'), img), img)


def test_zero_init_uses_identity_matrices_and_fixup_rescales_the_branch():
  x = jnp.ones((1, 3, 8))
  zero = Block(num_heads=2, mlp_hidden=16, knobs=Knobs(init='zero'))
  p = zero.init(jax.random.PRNGKey(0), x)['params']
  np.testing.assert_array_equal(p['mlp']['fc_in']['kernel'],
                                np.tile(np.eye(8), (1, 2)))
  np.testing.assert_array_equal(p['mlp']['fc_out']['kernel'], 0.0)
  fixup = Block(num_heads=2, mlp_hidden=16, knobs=Knobs(init='fixup'),
                num_branches=16)
  ref = Block(num_heads=2, mlp_hidden=16, knobs=Knobs(init='lecun'))
  pf = fixup.init(jax.random.PRNGKey(0), x)['params']
  pr = ref.init(jax.random.PRNGKey(0), x)['params']
  np.testing.assert_allclose(pf['mlp']['fc_in']['kernel'],
                             pr['mlp']['fc_in']['kernel'] / 4, rtol=1e-6)


def test_init_scale_and_he_scale_the_std():
  x = jnp.ones((1, 512))
  std = lambda **kw: float(jnp.std(models.MLP(
      hidden_sizes=(512,), knobs=Knobs(**kw)).init(
          jax.random.PRNGKey(0), x)['params']['dense_0']['kernel']))
  lecun = std(init='lecun')
  np.testing.assert_allclose(lecun, 512 ** -0.5, rtol=0.02)
  np.testing.assert_allclose(std(init='lecun', init_scale=0.5), lecun / 2,
                             rtol=1e-6)
  np.testing.assert_allclose(std(init='he'), np.sqrt(2) * lecun, rtol=0.02)
  w = models.MLP(hidden_sizes=(64,), knobs=Knobs(init='orthogonal')).init(
      jax.random.PRNGKey(0), jnp.ones((1, 64)))['params']['dense_0']['kernel']
  np.testing.assert_allclose(w.T @ w, np.eye(64), atol=1e-5)


def test_ntk_is_the_same_function_at_init_with_scaled_gradients():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8))
  sp = models.MLP(hidden_sizes=(32, 32), num_outputs=2)
  ntk = models.MLP(hidden_sizes=(32, 32), num_outputs=2,
                   knobs=Knobs(parametrization='ntk'))
  p_sp = sp.init(jax.random.PRNGKey(1), x)
  p_ntk = ntk.init(jax.random.PRNGKey(1), x)
  np.testing.assert_allclose(ntk.apply(p_ntk, x), sp.apply(p_sp, x), rtol=1e-5,
                             atol=1e-6)
  # Stored weights are N(0, 1)-scaled: sqrt(fan_in) times the SP ones, so the
  # gradient w.r.t. them is 1/sqrt(fan_in) times SP's.
  np.testing.assert_allclose(p_ntk['params']['dense_1']['kernel'],
                             np.sqrt(32) * p_sp['params']['dense_1']['kernel'],
                             rtol=1e-5)
  g = lambda m, p: jax.grad(lambda p: jnp.sum(m.apply(p, x)))(p)['params']
  np.testing.assert_allclose(g(ntk, p_ntk)['dense_1']['kernel'],
                             g(sp, p_sp)['dense_1']['kernel'] / np.sqrt(32),
                             rtol=1e-4, atol=1e-7)


def test_mup_readout_starts_at_zero_and_is_scaled_by_one_over_width_mult():
  # Tensor Programs V, Table 3 (readout initialized at zero, App. D.2) with
  # the mup package's 1 / width_mult output multiplier; muP's coordinate
  # check itself: tests/test_reproduce_mup_coordinate_check.py.
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8))
  sp = models.MLP(hidden_sizes=(256, 256), num_outputs=2)
  mup = models.MLP(hidden_sizes=(256, 256), num_outputs=2,
                   knobs=Knobs(parametrization='mup', width_mult=4.0))
  p_sp = sp.init(jax.random.PRNGKey(1), x)['params']
  p_mup = mup.init(jax.random.PRNGKey(1), x)['params']
  np.testing.assert_array_equal(p_mup['head']['kernel'], 0.0)
  for name in ('dense_0', 'dense_1'):  # Input and hidden layers: as SP.
    np.testing.assert_array_equal(p_mup[name]['kernel'], p_sp[name]['kernel'])
  # With the same (nonzero) readout weights, muP's output is SP's logits
  # before the bias, divided by width_mult = 4.
  p_mup['head'] = p_sp['head'] = {
      'kernel': jax.random.normal(jax.random.PRNGKey(2), (256, 2)),
      'bias': jnp.array([0.5, -1.0])}
  logits = lambda m, p: m.apply({'params': p}, x) - p['head']['bias'][None]
  np.testing.assert_allclose(logits(mup, p_mup), logits(sp, p_sp) / 4,
                             rtol=1e-5, atol=1e-6)


def test_mup_multipliers_follow_the_optimizer_family():
  m = ml_collections.ConfigDict(dict(name='transformer', d_model=256,
                                     base_width=64))
  rules = parametrization.mup_lr_multipliers(m, 'adamw')
  params = {'embed': {'embedding': jnp.ones((5, 256))},
            'block_0': {'attn': {'qkv': {'kernel': jnp.ones((256, 3, 4, 64)),
                                         'bias': jnp.ones((3, 4, 64))}},
                        'mlp': {'fc_out': {'kernel': jnp.ones((1024, 256))}},
                        'norm_attn': {'scale': jnp.ones(256)}}}
  mults = parametrization.multiplier_tree(params, rules)
  assert mults['block_0']['attn']['qkv']['kernel'] == 0.25
  assert mults['block_0']['mlp']['fc_out']['kernel'] == 0.25
  assert mults['block_0']['attn']['qkv']['bias'] == 1.0
  assert mults['embed']['embedding'] == 1.0
  sgd = parametrization.multiplier_tree(
      params, parametrization.mup_lr_multipliers(m, 'sgd'))
  assert sgd['block_0']['attn']['qkv']['kernel'] == 1.0
  assert sgd['embed']['embedding'] == 4.0
  assert sgd['block_0']['norm_attn']['scale'] == 4.0


def test_scale_by_lr_multipliers_scales_matching_updates_exactly():
  tx = optax.chain(optax.sgd(0.1), parametrization.scale_by_lr_multipliers(
      [('a/.*', 0.5), ('b', 3.0)]))
  params = {'a': {'w': jnp.ones(2)}, 'b': jnp.ones(2), 'c': jnp.ones(2)}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['a']['w'], -0.1)
  np.testing.assert_allclose(updates['b'], -0.6)
  np.testing.assert_allclose(updates['c'], -0.2)


def test_optimizer_config_fills_multipliers_only_for_mup():
  c = base.get_config()
  assert parametrization.optimizer_config(c) is c.optimizer
  c.model.parametrization, c.model.base_width = 'mup', 16
  opt = parametrization.optimizer_config(c)
  assert opt.lr_multipliers == parametrization.mup_lr_multipliers(c.model,
                                                                  'adamw')
  assert c.optimizer.lr_multipliers is None


def test_rotation_metrics_of_a_known_rotation():
  theta = 0.01
  params = {'w': jnp.array([[2.0, 0.0]]), 'b': jnp.ones(2)}
  new = {'w': 3.0 * jnp.array([[np.cos(theta), np.sin(theta)]]),
         'b': jnp.zeros(2)}
  m = parametrization.rotation_metrics(params, new, jnp.float32(0.1))
  assert set(m) == {'layers/effective_lr/w', 'layers/angular_update/w'}
  np.testing.assert_allclose(m['layers/effective_lr/w'], 0.1 / 4, rtol=1e-6)
  np.testing.assert_allclose(m['layers/angular_update/w'], theta, rtol=1e-3)
