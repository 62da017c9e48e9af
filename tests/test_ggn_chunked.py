"""The GGN through the softmax by vocabulary chunks (`analysis.hessian.
softmax_ggn`, `dynamics.chunked_loss.chunked_softmax_ggn`): the same matrix
as the plain GGN of the logits, with no tokens x vocab array."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.hessian import checkpoints, curvature, registry, softmax_ggn
from dynamics import chunked_loss
from dynamics.models import Transformer

jax.config.update('jax_numpy_rank_promotion', 'raise')

N, D, V = 24, 6, 37   # V is not a multiple of the chunk: padded columns.


def _dense_reference(h, w, b, dh, dw, db, weights, scale):
  """J^T diag(w) (diag p - p p^T) J t with the logits' Jacobian by jax."""
  logits = lambda h, w, b: scale * (h @ w + b[None])
  x, dx = jax.jvp(logits, (h, w, b), (dh, dw, db))
  p = jax.nn.softmax(x, axis=-1)
  u = weights[:, None] * (p * dx - p * jnp.sum(p * dx, -1, keepdims=True))
  return jax.vjp(logits, h, w, b)[1](u)


def test_chunked_product_equals_the_dense_one():
  """Float32 chunks against the dense product in float64, to 5e-6 of its
  largest entry (round-off: logits of standard deviation ~3; the dense
  float32 product is off by 8e-7, the chunks by 2.3e-6)."""
  keys = jax.random.split(jax.random.PRNGKey(0), 7)
  shapes = [(N, D), (D, V), (V,)] * 2
  h, w, b, dh, dw, db = [jax.random.normal(k, s) for k, s in zip(keys, shapes)]
  weights = jax.random.uniform(keys[6], (N,)) / N
  args = (h, 2 * w, b, dh, dw, db, weights)
  got = jax.jit(lambda *a: chunked_loss.chunked_softmax_ggn(
      *a, scale=0.7, chunk=8))(*args)
  with jax.enable_x64(True):
    want = _dense_reference(*[np.asarray(a, np.float64) for a in args], 0.7)
    want = [np.asarray(x) for x in want]
  for g, e in zip(got, want):
    assert g.shape == e.shape
    np.testing.assert_allclose(g, e, rtol=0, atol=5e-6 * np.abs(e).max())


def _model_head(tie, vocab=V):
  model = Transformer(vocab_size=vocab, d_model=16, num_layers=1,
                      num_heads=2, max_len=8, tie_embeddings=tie,
                      use_bias=not tie, output_scale=0.5)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 8), 0, vocab)
  batch = {'inputs': tokens, 'targets': jnp.roll(tokens, 1, axis=1)}
  params = model.init(jax.random.PRNGKey(0), tokens)['params']
  model_fn = lambda p, b: model.apply({'params': p}, b['inputs'])

  def loss(z, b):
    return jnp.mean(jax.nn.logsumexp(z, -1) - jnp.take_along_axis(
        z, b['targets'][..., None], -1)[..., 0])

  def hidden(p, b):
    h = model.apply({'params': p}, b['inputs'], return_hidden=True)
    return h.reshape(-1, h.shape[-1])

  def readout(p):
    w, bias, scale, _ = model.readout(p)
    return w, bias, scale
  return (params, batch, model_fn, loss,
          softmax_ggn.ChunkedHead(loss, hidden, readout, 8))


@pytest.mark.parametrize('tie', [False, True])
def test_ggn_kind_through_the_chunked_head_equals_the_plain_ggn(tie):
  """The 'ggn' entry with a `ChunkedHead` is the plain GGN of the logits
  (untied head with bias; tied embeddings), to 1e-6."""
  params, batch, model_fn, loss, head = _model_head(tie)
  v = jax.tree.map(lambda x: jnp.cos(jnp.arange(x.size, dtype=x.dtype)
                                     ).reshape(x.shape), params)
  plain = curvature('ggn', params, [batch], model_fn=model_fn,
                    output_loss_fn=loss).matvec(v)
  chunked = curvature('ggn', params, [batch], model_fn=model_fn,
                      output_loss_fn=head).matvec(v)
  flat = lambda t: jnp.concatenate([x.ravel() for x in jax.tree.leaves(t)])
  np.testing.assert_allclose(flat(chunked), flat(plain), rtol=1e-6,
                             atol=1e-6 * float(jnp.abs(flat(plain)).max()))
  assert float(jnp.abs(flat(plain)).max()) > 1e-3  # Not trivially zero.


def _largest_intermediate(fn, *args):
  sizes = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      sizes.extend(int(np.prod(v.aval.shape)) for v in eqn.outvars
                   if hasattr(v.aval, 'shape'))
      for sub in jax.core.jaxprs_in_params(eqn.params):
        walk(sub)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return max(sizes)


def test_no_tokens_times_vocabulary_array_and_less_memory():
  """The plain product holds [tokens x vocab] arrays (the test sees them);
  the chunked one none, and XLA's compiled temporary memory is smaller."""
  vocab = 1024
  params, batch, model_fn, loss, head = _model_head(False, vocab)
  tokens = batch['inputs'].size
  ops = {name: curvature('ggn', params, [batch], model_fn=model_fn,
                         output_loss_fn=fn)
         for name, fn in (('plain', loss), ('chunked', head))}
  largest = {name: _largest_intermediate(op.matvec, params)
             for name, op in ops.items()}
  assert largest['plain'] >= tokens * vocab
  assert largest['chunked'] < tokens * vocab, largest
  memory = {name: checkpoints.product_memory(op) for name, op in ops.items()}
  assert memory['chunked']['temp_bytes'] < memory['plain']['temp_bytes'], memory


def _fake_run(**options):
  opts = dict(loss='cross_entropy', softmax='softmax', z_loss=0.0,
              vocab_chunk=None)
  opts.update(options)
  config = types.SimpleNamespace(model=types.SimpleNamespace(
      name='transformer', quantization=None))
  model = Transformer(vocab_size=V, d_model=16, num_layers=1, num_heads=2,
                      max_len=8)
  embed = jax.ShapeDtypeStruct((opts.pop('vocab', V), 16), jnp.float32)
  return types.SimpleNamespace(
      options=types.SimpleNamespace(**opts), config=config,
      parts=types.SimpleNamespace(model=model), output_loss_fn=lambda: 'plain',
      abstract_state=types.SimpleNamespace(
          params={'embed': {'embedding': embed}}))


def test_when_the_softmax_goes_by_chunks():
  chunk = lambda run, c=None: getattr(softmax_ggn.output_loss(run, None, c),
                                      'chunk', None)
  assert chunk(_fake_run()) is None                      # Small vocabulary.
  assert chunk(_fake_run(vocab_chunk=16)) == 16          # The run's field.
  assert chunk(_fake_run(vocab=32_000)) == softmax_ggn.DEFAULT_CHUNK
  assert chunk(_fake_run(vocab=32_000), 0) is None        # Off.
  assert chunk(_fake_run(), 4) == 4                       # Asked for.
  assert chunk(_fake_run(softmax='stablemax', vocab=32_000)) is None
  with pytest.raises(ValueError, match='model.softmax=stablemax'):
    softmax_ggn.output_loss(_fake_run(softmax='stablemax'), None, 8)
  assert registry.product('ggn').needs == ('model_fn', 'output_loss_fn')
