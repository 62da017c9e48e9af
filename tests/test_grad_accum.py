"""Gradient accumulation: the whole batch's update, with one micro-batch's memory."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update('jax_numpy_rank_promotion', 'raise')

from configs import wsd  # noqa: E402
from dynamics import runs  # noqa: E402
from dynamics import step as step_lib  # noqa: E402


def _run(accum, sam_rho=None):
  c = wsd.get_config('smoke')
  c.model.d_model, c.model.num_heads, c.model.num_layers = 16, 2, 1
  c.data.seq_len, c.data.batch_size = 32, 32
  c.optimizer.grad_accum_steps = accum
  c.optimizer.sam.rho = sam_rho
  # An update linear in the gradient: Adam would turn the float noise of
  # gradients that are exactly 0 in exact arithmetic (the key bias's: the
  # softmax ignores a shift shared by all keys) into full-size steps.
  c.optimizer.name, c.optimizer.learning_rate = 'momentum', 0.5
  return runs.Run(c)


def test_accumulated_update_equals_the_whole_batch_update_in_less_memory():
  results, temp_bytes = {}, {}
  for accum in (1, 4):
    run = _run(accum)
    state = run.init_state()
    batches = [jax.tree.map(jnp.asarray, run.dataset.train_batch(i))
               for i in range(2)]
    compiled = run.train_step.lower(state, batches[0]).compile()
    temp_bytes[accum] = compiled.memory_analysis().temp_size_in_bytes
    for batch in batches:  # Two SGD-with-momentum updates.
      state, metrics = compiled(state, batch)
    results[accum] = jax.device_get((state.params, metrics))
  (p1, m1), (p4, m4) = results[1], results[4]
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert not all(np.array_equal(a, b) for a, b in
                 zip(jax.tree.leaves(p1), jax.tree.leaves(p4)))  # Other sums.
  for key in ('loss', 'accuracy', 'grad_norm', 'update_norm'):
    np.testing.assert_allclose(m1[key], m4[key], rtol=1e-5)
  # Activations of one micro-batch (a quarter) at a time.
  assert temp_bytes[4] < 0.6 * temp_bytes[1], temp_bytes


def test_sam_accumulated_is_m_sharpness_over_the_micro_batches():
  """SAM per micro-batch: with k = 2 micro-batches (rows j::2) it equals SAM
  with m = 2 sharpness micro-batches (contiguous halves) of the rows
  reordered as [0, 2, 4, ..., 1, 3, 5, ...]."""
  run = _run(2, sam_rho=0.05)
  state = run.init_state()
  batch = run.dataset.train_batch(0)
  order = np.concatenate([np.arange(0, 32, 2), np.arange(1, 32, 2)])
  reordered = {k: v[order] for k, v in batch.items()}
  options = run.options
  grads = {}
  for name, b, opts in (
      ('accumulated', batch, options),
      ('m-sharpness', reordered, dataclasses.replace(
          options, grad_accum_steps=1, sam=dataclasses.replace(
              options.sam, num_microbatches=2)))):
    fn = jax.jit(functools.partial(step_lib.accumulated_gradient,
                                   model=run.model, options=opts))
    grads[name] = fn(state.params, state.model_state,
                     jax.tree.map(jnp.asarray, b), state.rng)[2]
  for a, b in zip(jax.tree.leaves(grads['accumulated']),
                  jax.tree.leaves(grads['m-sharpness'])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
