"""The papers' LLaMA recipe: documents truncated/padded with the padding
masked out of the loss (``data.packing='truncate'``), bfloat16 parameters and
optimizer state (``model.param_dtype``), and the llama_c4 variants naming
their recipe."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import llama_c4
from dynamics import config_lib
from dynamics import losses
from dynamics import step as step_lib
from dynamics.data import tokens
from dynamics.models import cast_params

jax.config.update('jax_numpy_rank_promotion', 'raise')

EOS = 1
# Three train documents (the last without EOS, cut by the shard's end) and
# two eval documents; ids >= 2.
TRAIN = [[5, 6, 7, EOS], [8, 9, 10, 11, 12, 13, 14, EOS], [15, 16]]
EVAL = [[20, 21, EOS], [22, 23, 24, 25, 26, 27, EOS]]


def _write(path):
  shards = []
  for split, docs in (('train', TRAIN), ('eval', EVAL)):
    ids = np.asarray(sum(docs, []), np.uint16)
    name = tokens.shard_name(split, 0)
    ids.tofile(os.path.join(path, name))
    shards.append({'file': name, 'split': split, 'tokens': len(ids),
                   'max_id': int(ids.max())})
  tokens.write_meta(path, {'format': tokens.FORMAT, 'version': 1,
                           'dtype': 'uint16', 'vocab_size': 32, 'eos_id': EOS,
                           'tokenizer': 'test', 'shards': shards})
  return str(path)


def test_truncate_makes_one_padded_example_per_document(tmp_path):
  data = tokens.TokenFiles(_write(tmp_path), seq_len=5, batch_size=2, seed=0,
                           packing='truncate')
  assert data.num_windows == 3
  b = data.eval_batch(0)
  # Document [20, 21, EOS]: inputs 20 21 EOS, two targets (21, EOS).
  np.testing.assert_array_equal(b['inputs'][0], [20, 21, EOS, 0, 0])
  np.testing.assert_array_equal(b['targets'][0], [21, EOS, 0, 0, 0])
  np.testing.assert_array_equal(b['mask'][0], [1, 1, 0, 0, 0])
  # A document longer than seq_len: its first 5 tokens, 4 targets.
  np.testing.assert_array_equal(b['inputs'][1], [22, 23, 24, 25, 26])
  np.testing.assert_array_equal(b['targets'][1], [23, 24, 25, 26, 0])
  np.testing.assert_array_equal(b['mask'][1], [1, 1, 1, 1, 0])
  rows = {tuple(r) for i in range(3) for r in data.train_batch(i)['inputs']}
  assert {(5, 6, 7, EOS, 0), (8, 9, 10, 11, 12), (15, 16, 0, 0, 0)} <= rows
  packed = tokens.TokenFiles(str(tmp_path), seq_len=5, batch_size=2, seed=0)
  assert 'mask' not in packed.eval_batch(0)


class Fixed:

  def __init__(self, logits):
    self.logits = logits

  def apply(self, variables, inputs, **kwargs):
    return self.logits


def test_masked_positions_count_for_nothing():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 7))
  targets = jnp.array([[1, 2, 3, 4], [5, 6, 0, 0]])
  mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0]], jnp.float32)
  batch = {'inputs': jnp.zeros(1), 'targets': targets, 'mask': mask}
  opts = step_lib.StepOptions(z_loss=1e-3)
  loss, (_, m) = losses.compute_loss(Fixed(logits), {}, {}, batch, None,
                                     opts, train=True)
  log_z = jax.nn.logsumexp(logits, -1)
  ce = log_z - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
  keep = np.asarray(mask, bool)
  expect = np.mean(np.asarray(ce)[keep])
  np.testing.assert_allclose(m['cross_entropy'], expect, rtol=1e-6)
  np.testing.assert_allclose(
      loss, expect + 1e-3 * np.mean(np.asarray(log_z)[keep] ** 2), rtol=1e-6)
  # Changing a masked target changes nothing.
  batch2 = dict(batch, targets=targets.at[1, 3].set(6))
  loss2, _ = losses.compute_loss(Fixed(logits), {}, {}, batch2, None, opts,
                                 train=True)
  assert float(loss2) == float(loss)


def test_bfloat16_parameters_give_bfloat16_adam_state():
  import optax
  params = cast_params({'w': jnp.ones((3, 2)), 'step': jnp.arange(2)},
                       'bfloat16')
  assert params['w'].dtype == jnp.bfloat16 and params['step'].dtype == jnp.int32
  state = optax.adam(1e-3).init({'w': params['w']})
  assert {x.dtype for x in jax.tree.leaves(state[0].mu)} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(state[0].nu)} == {jnp.dtype(jnp.bfloat16)}


def test_llama_c4_variants_name_their_recipe(tmp_path):
  default, galore = llama_c4.get_config('smoke'), llama_c4.get_config(
      'smoke,galore')
  assert (default.model.param_dtype, default.data.packing) == ('float32',
                                                               'concat')
  assert (galore.model.param_dtype, galore.data.packing) == ('bfloat16',
                                                             'truncate')
  assert galore.name.endswith('_galore_recipe')
  c = llama_c4.get_config('smoke')
  c.data.name, c.data.packing = 'markov', 'truncate'
  with pytest.raises(config_lib.ConfigError, match='data.packing'):
    config_lib.validate(c)
  c = llama_c4.get_config('smoke')
  c.data.name, c.model.param_dtype = 'markov', 'float16'
  with pytest.raises(config_lib.ConfigError, match='model.param_dtype'):
    config_lib.validate(c)


def test_galore_recipe_trains_with_bf16_state(tmp_path):
  from dynamics import runs
  c = llama_c4.get_config('smoke,galore')
  c.data.path = _write(tmp_path)
  c.data.seq_len = c.model.max_len = 5
  c.data.batch_size = 2
  c.model.vocab_size = 32
  run = runs.Run(c)
  state = run.init_state()
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.bfloat16)}
  floats = [x for x in jax.tree.leaves(state.opt_state)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and {x.dtype for x in floats} == {jnp.dtype(jnp.bfloat16)}
  batch = run.dataset.train_batch(0)
  assert 'mask' in batch
  step = step_lib.make_train_step(run.model, run.tx, run.schedule,
                                  run.options)
  new, metrics = step(state, jax.tree.map(jnp.asarray, batch))
  assert np.isfinite(float(metrics['loss']))
  assert {x.dtype for x in jax.tree.leaves(new.params)} == {jnp.dtype(jnp.bfloat16)}
