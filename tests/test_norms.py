"""Normalization knobs: the Pre-LN / Pre-RMSNorm equivalence, DyT, placements."""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dynamics.models import DyT, Transformer

jax.config.update('jax_numpy_rank_promotion', 'raise')

V, D, L, H, T = 13, 16, 2, 2, 8


def _model(**kw):
  kw.setdefault('tie_embeddings', False)
  return Transformer(vocab_size=V, d_model=D, num_layers=L, num_heads=H,
                     max_len=T, **kw)


def _tokens():
  return jax.random.randint(jax.random.PRNGKey(0), (2, T), 0, V)


def _noisy_params(model):
  """Init plus noise on every leaf, so that norm gains / biases matter."""
  params = model.init(jax.random.PRNGKey(1), _tokens())['params']
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


def _to_rmsnorm(params, center: bool):
  """Pre-LN parameters -> Pre-RMSNorm parameters (Jiang et al., 2023).

  With ``center`` everything that writes into the residual stream (token and
  position embeddings, attention and MLP output projections) is made
  zero-mean over the model dimension, so each norm sees a zero-mean input;
  each LayerNorm bias is folded into the bias of the linear layer it feeds.
  """
  p = flax.core.unfreeze(jax.tree.map(np.asarray, params))
  c = (lambda w: w - w.mean(-1, keepdims=True)) if center else (lambda w: w)
  p['embed']['embedding'] = c(p['embed']['embedding'])
  p['pos_embed'] = c(p['pos_embed'])

  def fold(norm, dense, kernel_axes):
    b = p_norm_pop(norm)
    dense['bias'] = dense['bias'] + np.tensordot(b, dense['kernel'],
                                                 axes=kernel_axes)

  def p_norm_pop(norm):
    return norm.pop('bias')

  for i in range(L):
    blk = p[f'block_{i}']
    for w in (blk['attn']['out'], blk['mlp']['fc_out']):
      w['kernel'], w['bias'] = c(w['kernel']), c(w['bias'])
    fold(blk['norm_attn'], blk['attn']['qkv'], 1)
    fold(blk['norm_mlp'], blk['mlp']['fc_in'], 1)
  fold(p['norm_final'], p['head'], 1)
  return p


def test_pre_ln_equals_pre_rmsnorm_on_zero_mean_residuals():
  ln, rms = _model(norm='layernorm'), _model(norm='rmsnorm')
  params = _noisy_params(ln)
  tokens = _tokens()
  want = ln.apply({'params': params}, tokens)
  got = rms.apply({'params': _to_rmsnorm(params, center=True)}, tokens)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)
  # Without the zero-mean residual stream the two differ: the test can fail.
  off = rms.apply({'params': _to_rmsnorm(params, center=False)}, tokens)
  assert np.max(np.abs(off - want)) > 1e-2


def test_dyt_is_the_elementwise_tanh_with_affine():
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 5)) * 3
  params = {'params': {'alpha': jnp.float32(0.7),
                       'scale': jnp.arange(5.0) - 2,
                       'bias': jnp.linspace(-1, 1, 5)}}
  want = np.tanh(0.7 * np.asarray(x, np.float64)) * (np.arange(5.0) - 2) \
      + np.linspace(-1, 1, 5)[None]
  np.testing.assert_allclose(DyT().apply(params, x), want, rtol=1e-6, atol=1e-6)
  init = DyT(alpha_init=0.5).init(jax.random.PRNGKey(0), x)['params']
  assert float(init['alpha']) == 0.5


def test_dyt_replaces_every_norm_of_the_transformer():
  model = _model(norm='dyt', norm_position='peri', qk_norm=True)
  params = model.init(jax.random.PRNGKey(1), _tokens())['params']
  names = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(params)[0]]
  norms = {n.rsplit("']['", 1)[0] for n in names if 'norm' in n}
  # Peri-LN: four norms per block (in and out of both sublayers), q/k norms,
  # and the final norm; each one a DyT with alpha, scale and bias.
  assert len(norms) == 6 * L + 1
  for n in norms:
    for leaf in ('alpha', 'scale', 'bias'):
      assert f"{n}']['{leaf}']" in names


def test_layernorm_scaling_divides_norm_outputs_by_sqrt_depth():
  tokens = _tokens()
  plain, scaled = _model(), _model(layernorm_scaling=True)
  params = _noisy_params(plain)

  def qkv(model):
    _, st = model.apply({'params': params}, tokens,
                        capture_intermediates=True, mutable=['intermediates'])
    return [np.asarray(st['intermediates'][f'block_{i}']['attn']['qkv']['__call__'][0])
            - np.asarray(params[f'block_{i}']['attn']['qkv']['bias'])
            for i in range(L)]

  a, b = qkv(plain), qkv(scaled)
  np.testing.assert_allclose(b[0], a[0], rtol=1e-6)  # depth 1: factor 1.
  np.testing.assert_allclose(b[1], a[1] / np.sqrt(2), rtol=1e-4, atol=1e-6)


def test_mix_ln_places_post_ln_first_then_pre_ln():
  assert _model(norm_position='mix').block_positions() == ('pre', 'pre')
  m = Transformer(vocab_size=V, num_layers=8, norm_position='mix')
  assert m.block_positions() == ('post',) * 2 + ('pre',) * 6
  m = Transformer(vocab_size=V, num_layers=4, norm_position='mix',
                  mix_ln_split=3)
  assert m.block_positions() == ('post',) * 3 + ('pre',)


def test_deepnorm_scales_the_residual_and_the_branch_init():
  tokens = _tokens()
  model = _model(norm_position='deepnorm')
  params = model.init(jax.random.PRNGKey(1), tokens)['params']
  ref = _model(norm_position='post').init(jax.random.PRNGKey(1), tokens)['params']
  beta = (8 * L) ** -0.25
  blk, ref_blk = params['block_0'], ref['block_0']
  np.testing.assert_allclose(blk['mlp']['fc_in']['kernel'],
                             beta * ref_blk['mlp']['fc_in']['kernel'], rtol=1e-6)
  qkv, ref_qkv = blk['attn']['qkv']['kernel'], ref_blk['attn']['qkv']['kernel']
  np.testing.assert_allclose(qkv[:, :2], ref_qkv[:, :2])  # q, k unscaled.
  np.testing.assert_allclose(qkv[:, 2], beta * ref_qkv[:, 2], rtol=1e-6)
  # The forward pass uses alpha * x: with zero branches a block is LN(alpha x).
  assert not np.allclose(model.apply({'params': params}, tokens),
                         _model(norm_position='post').apply({'params': params},
                                                            tokens))
