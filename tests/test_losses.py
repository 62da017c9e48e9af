"""compute_loss: softmax vs StableMax, the z-loss, and the sown stability probes."""

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import losses
from dynamics import step as step_lib
from dynamics.models import Transformer, ResNet

jax.config.update('jax_numpy_rank_promotion', 'raise')


class Fixed:
  """A 'model' returning fixed logits, to test the loss alone."""

  def __init__(self, logits):
    self.logits = logits

  def apply(self, variables, inputs, **kwargs):
    del variables, inputs, kwargs
    return self.logits


def _loss(logits, targets, **opts):
  batch = {'inputs': jnp.zeros(1), 'targets': jnp.asarray(targets)}
  return losses.compute_loss(Fixed(logits), {}, {}, batch, None,
                             step_lib.StepOptions(**opts), train=True)


def test_stablemax_matches_its_definition():
  logits = jnp.array([[-2.0, 0.0, 3.0]])
  loss, (_, metrics) = _loss(logits, [2], softmax='stablemax')
  s = np.array([1 / 3, 1.0, 4.0])
  np.testing.assert_allclose(loss, -np.log(s[2] / s.sum()), rtol=1e-6)
  assert float(metrics['accuracy']) == 1.0


def test_stablemax_keeps_a_gradient_where_softmax_collapses():
  # float32 Softmax Collapse: the correct logit is so far ahead that the
  # softmax loss and its gradient round to exactly zero; StableMax's do not.
  logits = jnp.array([[0.0, 120.0]])
  grad = lambda kind: jax.grad(
      lambda z: _loss(z, [1], softmax=kind)[0])(logits)
  np.testing.assert_array_equal(grad('softmax'), 0.0)
  np.testing.assert_array_equal(_loss(logits, [1])[0], 0.0)
  g = grad('stablemax')
  assert np.all(np.isfinite(g)) and np.all(np.abs(g) > 1e-5)


def test_z_loss_adds_the_mean_squared_log_partition():
  logits = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
  base, _ = _loss(logits, [0, 2])
  loss, (_, m) = _loss(logits, [0, 2], z_loss=1e-2)
  log_z = np.log(np.exp(np.asarray(logits)).sum(-1))
  np.testing.assert_allclose(loss - base, 1e-2 * np.mean(log_z ** 2), rtol=1e-5)
  np.testing.assert_allclose(m['cross_entropy'], base, rtol=1e-7)


def test_transformer_probes_match_a_direct_computation():
  model = Transformer(vocab_size=11, d_model=16, num_layers=2, num_heads=2,
                      max_len=8)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 8), 0, 11)
  params = model.init(jax.random.PRNGKey(1), tokens)['params']
  batch = {'inputs': tokens, 'targets': tokens}
  opts = step_lib.StepOptions(log_per_layer=True)
  loss, (state, m) = losses.compute_loss(model, params, {}, batch, None, opts,
                                         train=True)
  assert state == {}
  _, inter = model.apply({'params': params}, tokens,
                         capture_intermediates=True, mutable=['intermediates'])
  inter = inter['intermediates']
  for i in range(2):
    x = inter[f'block_{i}']['__call__'][0]
    np.testing.assert_allclose(m[f'layers/resid_var/block_{i}'], np.var(x),
                               rtol=1e-5)
    # Max causal logit, recomputed from the block's qkv projection.
    qkv = inter[f'block_{i}']['attn']['qkv']['__call__'][0]
    q, k = np.asarray(qkv[:, :, 0]), np.asarray(qkv[:, :, 1])
    s = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(8)
    s = np.where(np.tril(np.ones((8, 8), bool)), s, -np.inf)
    np.testing.assert_allclose(m[f'layers/attn_logit_max/block_{i}'], s.max(),
                               rtol=1e-5)
  logits = model.apply({'params': params}, tokens)
  np.testing.assert_allclose(m['output_log_z'],
                             np.mean(jax.nn.logsumexp(logits, -1)), rtol=1e-6)
  # Probes do not change the loss, and are off by default.
  loss0, (_, m0) = losses.compute_loss(model, params, {}, batch, None,
                                       step_lib.StepOptions(), train=True)
  assert float(loss0) == float(loss)
  assert not any(k.startswith('layers/') for k in m0)


def test_probes_keep_batchnorm_state_flowing():
  model = ResNet(channels=(4,), num_outputs=3)
  x = jnp.ones((2, 4, 4, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  params, state = variables['params'], {'batch_stats': variables['batch_stats']}
  batch = {'inputs': x, 'targets': jnp.array([0, 1])}
  _, (new_state, _) = losses.compute_loss(
      model, params, state, batch, None,
      step_lib.StepOptions(log_per_layer=True), train=True)
  assert set(new_state) == {'batch_stats'}
