"""LLaMA-style transformer options, and the papers' configs on token files.

RoPE's relative-position property; the whole LLaMA forward pass against a
NumPy transcription of the architecture; one golden gradient step per new
option; the ``:smoke`` variants of ``configs/llama_c4.py`` and
``configs/gpt2_owt.py`` trained on shards that ``prepare_text`` makes from
the standard library's source, with a resume from a mid-run checkpoint that
ends bit for bit where the uninterrupted run ends.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update('jax_numpy_rank_promotion', 'raise')

import chex  # noqa: E402

from configs import gpt2_owt, llama_c4  # noqa: E402
from dynamics import checkpoint, data, models, throughput, train  # noqa: E402
from dynamics.models import layers  # noqa: E402
from experiments import prepare_text  # noqa: E402

V, D, H, T = 32, 16, 2, 8
TOKENS = (np.arange(2 * T).reshape(2, T) * 7) % V


def test_rope_scores_depend_only_on_the_distance():
  q_vec, k_vec = np.random.default_rng(0).standard_normal((2, 8))
  # The same query and key at every position: any variation of the scores
  # comes from the positions alone.
  q = jnp.tile(jnp.asarray(q_vec, jnp.float32), (1, 12, 1, 1))
  k = jnp.tile(jnp.asarray(k_vec, jnp.float32), (1, 12, 1, 1))
  s = np.einsum('qd,kd->qk', layers.apply_rope(q)[0, :, 0],
                layers.apply_rope(k)[0, :, 0])
  for i in range(1, 12):   # Constant along every diagonal i - j.
    for j in range(1, 12):
      assert s[i, j] == pytest.approx(s[i - 1, j - 1], abs=1e-5)
  assert abs(s[0, 0] - q_vec @ k_vec) < 1e-5  # Position 0 is not rotated.
  assert np.ptp(np.diag(s, -3)) < 1e-5 and abs(s[3, 0] - s[0, 0]) > 1e-2
  # Norms are kept: a rotation.
  np.testing.assert_allclose(np.linalg.norm(layers.apply_rope(q), axis=-1),
                             np.linalg.norm(q, axis=-1), rtol=1e-6)


def _rms(x, scale):
  return x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + 1e-6) * scale


def _rope(x):  # (B, T, H, Dh), rotate-half pairs (i, i + Dh/2).
  half = x.shape[-1] // 2
  angle = np.arange(x.shape[1])[:, None] * 10_000.0 ** (-np.arange(half) / half)
  cos, sin = np.cos(angle)[None, :, None], np.sin(angle)[None, :, None]
  x1, x2 = x[..., :half], x[..., half:]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def reference_llama(p, tokens):
  """The GaLore / Stable-SPAM LLaMA block, one layer, written out in NumPy."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  b = p['block_0']
  x = p['embed']['embedding'][tokens]
  h = _rms(x, b['norm_attn']['scale'])
  qkv = np.einsum('btd,dshk->btshk', h, b['attn']['qkv']['kernel'])
  q, k, v = _rope(qkv[:, :, 0]), _rope(qkv[:, :, 1]), qkv[:, :, 2]
  scores = np.einsum('bqhk,bshk->bhqs', q, k) / np.sqrt(q.shape[-1])
  scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  mixed = np.einsum('bhqs,bshk->bqhk', weights, v)
  x = x + np.einsum('bqhk,hkd->bqd', mixed, b['attn']['out']['kernel'])
  h = _rms(x, b['norm_mlp']['scale'])
  gate, up = np.split(h @ b['mlp']['fc_in']['kernel'], 2, axis=-1)
  x = x + (gate / (1 + np.exp(-gate)) * up) @ b['mlp']['fc_out']['kernel']
  return _rms(x, p['norm_final']['scale']) @ p['head']['kernel']


def test_llama_forward_matches_a_numpy_transcription():
  model = models.Transformer(V, D, 1, H, norm='rmsnorm', position='rope',
                             mlp='swiglu', mlp_hidden=24, use_bias=False,
                             tie_embeddings=False)

  @jax.jit
  def init_and_apply(key):
    params = model.init(key, TOKENS)['params']
    return params, model.apply({'params': params}, TOKENS)

  params, logits = init_and_apply(jax.random.PRNGKey(0))
  names = jax.tree_util.tree_map_with_path(lambda p, _: jax.tree_util.keystr(p),
                                           params)
  assert not any('bias' in n or 'pos_embed' in n for n in jax.tree.leaves(names))
  assert params['block_0']['mlp']['fc_in']['kernel'].shape == (D, 48)
  np.testing.assert_allclose(logits, reference_llama(params, TOKENS),
                             rtol=2e-4, atol=2e-5)


# Loss at init and after one SGD step of 0.5, each option alone ('default':
# none, the reference that remat must reproduce).
GOLDEN = {
    'default': (3.4516711235046387, 3.2353627681732178),
    'rope': (3.4522769451141357, 3.3131797313690186),
    'swiglu': (3.45627498626709, 3.4069299697875977),
    'no_bias': (3.4516711235046387, 3.234995126724243),
    'untied': (3.9985625743865967, 3.695225477218628),
}
OPTIONS = {'default': {}, 'rope': {'position': 'rope'},
           'swiglu': {'mlp': 'swiglu', 'mlp_hidden': 24},
           'no_bias': {'use_bias': False}, 'untied': {'tie_embeddings': False},
           'remat': {'remat': 'dots'}}


def _golden_step(options):
  """``(model, loss, abstract params, [loss at init, loss after a step])``."""
  model = models.Transformer(V, D, 1, H, max_len=T, **options)
  inputs, targets = jnp.asarray(TOKENS[:, :-1]), jnp.asarray(TOKENS[:, 1:])
  init = lambda: model.init(jax.random.PRNGKey(0), inputs)['params']

  def loss(p):
    logits = model.apply({'params': p}, inputs)
    logz = jax.nn.logsumexp(logits, -1)
    return jnp.mean(logz - jnp.take_along_axis(logits, targets[..., None],
                                               -1)[..., 0])

  @jax.jit
  def step():  # One compile: init, gradient, SGD step, loss again.
    p = init()
    l0, g = jax.value_and_grad(loss)(p)
    return l0, loss(jax.tree.map(lambda w, d: w - 0.5 * d, p, g))

  return model, loss, jax.eval_shape(init), [float(v) for v in step()]


@pytest.mark.parametrize('name', [n for n in GOLDEN if n != 'default'])
def test_golden_step_of_each_option(name):
  _, _, _, (before, after) = _golden_step(OPTIONS[name])
  assert after < before
  np.testing.assert_allclose((before, after), GOLDEN[name], rtol=1e-5)


def test_remat_recomputes_the_same_gradient():
  _, loss, abstract, values = _golden_step(OPTIONS['remat'])
  np.testing.assert_allclose(values, GOLDEN['default'], rtol=1e-6)
  assert 'remat' in str(jax.make_jaxpr(jax.grad(loss))(abstract))


# --- The papers' configs, smoke-sized, on token files -----------------------


@pytest.fixture(scope='module')
def token_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('tokens') / 'stdlib_json')
  files = prepare_text.input_files(os.path.join(data.default_text_dir(),
                                                'json'))
  prepare_text.prepare(files, out, 'bytes', eval_tokens=4000,
                       shard_tokens=20_000, progress=False)
  return out


def _smoke(module, path):
  c = module.get_config('smoke')
  c.data.path = path
  c.checkpoint.async_save = False
  return c


def _lines(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f]


def test_llama_smoke_trains_on_token_files(token_dir, tmp_path):
  config = _smoke(llama_c4, token_dir)
  state = train.train_and_evaluate(config, str(tmp_path))
  lines = _lines(str(tmp_path))
  assert int(state.step) == config.num_steps == lines[-1]['step']
  assert lines[-1]['eval_loss'] < lines[0]['eval_loss']
  assert any('tokens_per_s' in l for l in lines)
  assert state.params['embed']['embedding'].shape == (257, 32)
  assert 'head' in state.params and 'pos_embed' not in state.params


def test_gpt2_smoke_resumes_bitwise_on_token_files(token_dir, tmp_path):
  config = _smoke(gpt2_owt, token_dir)
  whole, cut = str(tmp_path / 'whole'), str(tmp_path / 'cut')
  full = jax.device_get(train.train_and_evaluate(config, whole))
  # Preempted after step 4: its checkpoint (data position included) is the
  # latest; metrics.jsonl still holds the lines of steps 5-8.
  shutil.copytree(whole, cut)
  shutil.rmtree(os.path.join(cut, 'checkpoints', str(config.num_steps)))
  assert checkpoint.available_steps(cut) == [4]
  resumed = jax.device_get(train.train_and_evaluate(config, cut))
  chex.assert_trees_all_equal(full, resumed)  # Bit for bit.
  strip = lambda lines: [{k: v for k, v in l.items()
                          if k not in throughput.KEYS} for l in lines]
  assert strip(_lines(whole)) == strip(_lines(cut))
  assert full.params['pos_embed'].shape == (16, 32)
