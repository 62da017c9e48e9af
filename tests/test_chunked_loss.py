"""The levers of the GPU step, each equal to the plain path: the cross-entropy
by vocabulary chunks (value, gradient, metrics; no N x V array in either pass)
and the attention implementation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import chunked_loss
from dynamics import losses
from dynamics import step as step_lib
from dynamics.models import Knobs, Transformer

jax.config.update('jax_numpy_rank_promotion', 'raise')

N, D, V = 24, 6, 37   # V is not a multiple of the chunk: the padded columns.


def _hwb(seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(k1, (N, D)), 2 * jax.random.normal(k2, (D, V)),
          jax.random.normal(k3, (V,)))


@pytest.mark.parametrize('softmax', ['softmax', 'stablemax'])
def test_log_normalizer_and_its_gradient_match_the_plain_one(softmax):
  h, w, b = _hwb()
  t = jnp.arange(N) % V

  def plain(h, w, b):
    x = (h @ w + b[None]) * 0.7
    log_z, log_unnorm = losses.log_normalizer(x, softmax)
    label = jnp.take_along_axis(log_unnorm, t[:, None], axis=-1)[:, 0]
    return jnp.sum((log_z - label) * jnp.cos(jnp.arange(N))), jnp.argmax(x, -1)

  def chunked(h, w, b):
    per, _, top = chunked_loss.chunked_cross_entropy(
        h, w, b, t, scale=0.7, chunk=8, phi=losses.PHIS[softmax])
    return jnp.sum(per * jnp.cos(jnp.arange(N))), top

  (v0, top0), g0 = jax.value_and_grad(plain, (0, 1, 2), has_aux=True)(h, w, b)
  (v1, top1), g1 = jax.jit(jax.value_and_grad(chunked, (0, 1, 2),
                                              has_aux=True))(h, w, b)
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
  np.testing.assert_array_equal(top1, top0)
  for a, e in zip(g1, g0):
    np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)


def test_no_array_of_tokens_times_vocabulary_in_value_or_gradient():
  h, w, b = _hwb()
  t = jnp.arange(N) % V
  loss = lambda h, w, b: jnp.mean(chunked_loss.chunked_cross_entropy(
      h, w, b, t, chunk=8)[0])
  plain = lambda h, w, b: jnp.mean(jax.nn.logsumexp(h @ w + b[None], -1))

  def biggest(fn):
    jaxpr = jax.make_jaxpr(jax.grad(fn, (0, 1, 2)))(h, w, b)
    sizes = []

    def walk(jp):
      for eqn in jp.eqns:
        sizes.extend(int(np.prod(v.aval.shape)) for v in eqn.outvars)
        for sub in jax.core.jaxprs_in_params(eqn.params):
          walk(sub)
    walk(jaxpr.jaxpr)
    return max(sizes)

  assert biggest(plain) >= N * V          # The test can see the logits ...
  assert biggest(loss) < N * V            # ... and the chunked loss has none.


def _model(**kw):
  return Transformer(vocab_size=V, d_model=16, num_layers=1, num_heads=2,
                     max_len=8, **kw)


@pytest.mark.parametrize('kw', [
    dict(),
    dict(tie_embeddings=False, output_scale=0.5),
    dict(tie_embeddings=False, knobs=Knobs(parametrization='mup',
                                           width_mult=2.0)),
])
def test_compute_loss_by_chunks_equals_the_plain_loss(kw):
  model = _model(**kw)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 8), 0, V)
  params = model.init(jax.random.PRNGKey(2), tokens)['params']
  if 'head' in params:  # A nonzero bias (muP initializes the head at zero).
    params['head'] = {k: v + 0.1 for k, v in params['head'].items()}
  batch = {'inputs': tokens, 'targets': jnp.roll(tokens, 1, axis=1)}
  opts = step_lib.StepOptions(z_loss=1e-2, log_per_layer=True)

  def run(options):
    fn = lambda p: losses.compute_loss(model, p, {}, batch, None, options,
                                       train=True)
    return jax.value_and_grad(fn, has_aux=True)(params)

  (l0, (_, m0)), g0 = run(opts)
  (l1, (_, m1)), g1 = run(dataclasses.replace(opts, vocab_chunk=16))
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  assert set(m1) == set(m0)
  for k in m0:
    np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5, err_msg=k)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=2e-4,
                                                       atol=1e-6), g1, g0)


def test_bfloat16_compute_chunks_agree_to_bfloat16_round_off():
  model = _model(tie_embeddings=False, dtype=jnp.bfloat16)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 8), 0, V)
  params = model.init(jax.random.PRNGKey(2), tokens)['params']
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  batch = {'inputs': tokens, 'targets': tokens}
  fn = lambda p, o: losses.compute_loss(model, p, {}, batch, None, o,
                                        train=True)[0]
  l0, g0 = jax.value_and_grad(fn)(params, step_lib.StepOptions())
  l1, g1 = jax.value_and_grad(fn)(params, step_lib.StepOptions(vocab_chunk=8))
  assert l0.dtype == l1.dtype == jnp.float32
  np.testing.assert_allclose(l1, l0, rtol=1e-2)
  for a, e in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, e, atol=2e-2 * float(jnp.max(jnp.abs(e))))


def test_attention_implementation_xla_equals_the_default_and_explicit_softmax():
  tokens = jax.random.randint(jax.random.PRNGKey(3), (2, 8), 0, V)
  params = _model().init(jax.random.PRNGKey(4), tokens)
  out = {impl: _model(attention_impl=impl).apply(params, tokens)
         for impl in (None, 'xla')}
  np.testing.assert_array_equal(out['xla'], out[None])
  q, k, v = jax.random.normal(jax.random.PRNGKey(5), (3, 2, 5, 2, 4))
  y = jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                   implementation='xla')
  s = jnp.einsum('bqhd,bkhd->bhqk', q, k) / 2.0
  s = jnp.where(jnp.tril(jnp.ones((5, 5), bool)), s, -jnp.inf)
  ref = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(s, -1), v)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_forward_over_reverse_hvp_passes_the_custom_vjp():
  # The sharpness probe and analysis.hessian differentiate the gradient
  # forward: the chunked loss's HVP equals the plain one's.
  h, w, b = _hwb(1)
  v = jnp.cos(w)
  chunked = lambda w: jnp.sum(chunked_loss.chunked_log_normalizer(
      h, w, b, chunk=8)[0])
  plain = lambda w: jnp.sum(jax.nn.logsumexp(h @ w + b[None], -1))
  hvp = lambda f: jax.jvp(jax.grad(f), (w,), (v,))[1]
  np.testing.assert_allclose(hvp(chunked), hvp(plain), rtol=1e-4, atol=1e-5)
