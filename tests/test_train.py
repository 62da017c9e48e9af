"""The train step against hand-written math; NaN handling; EMA; metrics."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import wsd
from dynamics import losses, metrics, models, step as step_lib, train
from dynamics.runs import Run

jax.config.update('jax_numpy_rank_promotion', 'raise')


def _linear_state(lr):
  """A linear model (an MLP with no hidden layer) trained by SGD."""
  model = models.MLP(hidden_sizes=(), num_outputs=2, norm='none')
  x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 3)), jnp.float32)
  y = jnp.asarray(np.random.default_rng(1).standard_normal((8, 2)), jnp.float32)
  params = model.init(jax.random.PRNGKey(0), x)['params']
  tx = optax.sgd(lr)
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              opt_state=tx.init(params), model_state={},
                              rng=jax.random.PRNGKey(1))
  return model, tx, state, {'inputs': x, 'targets': y}


def test_one_step_of_sgd_on_a_linear_model_matches_the_formula():
  lr = 0.1
  model, tx, state, batch = _linear_state(lr)
  step = jax.jit(functools.partial(
      step_lib.train_step, model=model, tx=tx, schedule=optax.constant_schedule(lr),
      options=step_lib.StepOptions(loss='mse')))
  w = np.asarray(state.params['head']['kernel'], np.float64)
  b = np.asarray(state.params['head']['bias'], np.float64)
  x, y = np.asarray(batch['inputs'], np.float64), np.asarray(batch['targets'], np.float64)
  residual = x @ w + b - y                       # (N, K)
  loss = 0.5 * np.mean(np.sum(residual ** 2, axis=1))
  grad_w, grad_b = x.T @ residual / len(x), residual.mean(0)
  new_state, m = step(state, batch)
  np.testing.assert_allclose(new_state.params['head']['kernel'], w - lr * grad_w, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(new_state.params['head']['bias'], b - lr * grad_b, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(m['loss'], loss, rtol=1e-6)
  grad_norm = np.sqrt(np.sum(grad_w ** 2) + np.sum(grad_b ** 2))
  np.testing.assert_allclose(m['grad_norm'], grad_norm, rtol=1e-6)
  np.testing.assert_allclose(m['update_norm'], lr * grad_norm, rtol=1e-6)
  np.testing.assert_allclose(m['learning_rate'], lr, rtol=1e-7)
  assert int(new_state.step) == 1


def _device(batch):
  return jax.tree.map(jnp.asarray, batch)


def _smoke_parts():
  config = wsd.get_config('smoke')
  run = Run(config)
  return config, run, run.init_state()


def test_golden_transformer_step():
  """Regression guard: one adamw step of the smoke transformer, fixed bits."""
  config, run, state = _smoke_parts()
  step = run.train_step
  batch = _device(run.dataset.train_batch(0))
  state, m = step(state, batch)
  state, m2 = step(state, _device(run.dataset.train_batch(1)))
  # Uniform prediction over 32 tokens: log(32) = 3.4657 at init.
  np.testing.assert_allclose(m['loss'], 3.4657, atol=0.02)
  np.testing.assert_allclose(m['loss'], GOLDEN_LOSS_0, rtol=1e-5)
  np.testing.assert_allclose(m2['loss'], GOLDEN_LOSS_1, rtol=1e-5)
  # First update uses peak / warmup_steps, not 0.
  np.testing.assert_allclose(m['learning_rate'], config.optimizer.learning_rate / 5, rtol=1e-6)


GOLDEN_LOSS_0 = 3.462570905685425
GOLDEN_LOSS_1 = 3.4562675952911377


def test_steps_replay_exactly():
  _, run, state = _smoke_parts()
  step = run.train_step
  batch = _device(run.dataset.train_batch(0))
  s1, m1 = step(state, batch)
  _, run2, state2 = _smoke_parts()
  s2, m2 = run2.train_step(state2, batch)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_array_equal(a, b)


def test_ema_follows_incremental_update():
  decay = 0.9
  model, tx, state, batch = _linear_state(0.1)
  state = state.replace(ema_params=state.params)
  options = step_lib.StepOptions(loss='mse', ema_decay=decay)
  step = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx,
                                   schedule=optax.constant_schedule(0.1),
                                   options=options))
  ema = jax.tree.map(np.asarray, state.params)
  for _ in range(3):
    state, _ = step(state, batch)
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * np.asarray(p),
                       ema, state.params)
  for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(ema)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_per_layer_norms_cover_every_parameter():
  model, tx, state, batch = _linear_state(0.1)
  step = jax.jit(functools.partial(
      step_lib.train_step, model=model, tx=tx, schedule=optax.constant_schedule(0.1),
      options=step_lib.StepOptions(loss='mse', log_per_layer=True)))
  _, m = step(state, batch)
  for name in ('param_norm', 'grad_norm', 'update_norm'):
    per = [m[f'layers/{name}/head/kernel'], m[f'layers/{name}/head/bias']]
    np.testing.assert_allclose(np.sqrt(sum(np.square(per))), m[name], rtol=1e-6)


def test_cross_entropy_and_z_loss():
  logits = jnp.asarray([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
  targets = jnp.asarray([0, 1])

  class Fixed(models.MLP):
    def __call__(self, x, train=False):
      return logits

  opts = step_lib.StepOptions(loss='cross_entropy', z_loss=1e-2)
  loss, (_, m) = losses.compute_loss(Fixed(), {}, {}, {'inputs': logits, 'targets': targets},
                                     None, opts, train=False)
  log_z = np.log(np.exp(np.asarray(logits)).sum(1))
  ce = np.mean(log_z - np.asarray(logits)[[0, 1], [0, 1]])
  np.testing.assert_allclose(m['cross_entropy'], ce, rtol=1e-6)
  np.testing.assert_allclose(loss, ce + 1e-2 * np.mean(log_z ** 2), rtol=1e-6)
  np.testing.assert_allclose(m['accuracy'], 0.5)


def test_nonfinite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
  from dynamics import checkpoint
  config = wsd.get_config('smoke')
  config.data.name = 'teacher_student'
  config.model.name = 'mlp'
  config.model.norm = 'none'
  config.optimizer.name = 'sgd'
  config.optimizer.clip_norm = None
  config.optimizer.learning_rate = 3e3   # Diverges within a few steps.
  config.schedule.name = 'constant'
  config.schedule.warmup_steps = 0
  config.checkpoint.every_steps = 1
  config.checkpoint.async_save = False
  with pytest.raises(train.NonFiniteError, match=r'non-finite \w+=(nan|inf|-inf) at step (\d+)') as err:
    train.train_and_evaluate(config, str(tmp_path))
  bad_step = int(str(err.value).split(' at step ')[1].split(';')[0])
  steps = checkpoint.available_steps(str(tmp_path))
  assert steps and max(steps) == bad_step - 1
  state = Run.open(str(tmp_path)).state()
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
  with open(tmp_path / 'metrics.jsonl') as f:
    logged = [json.loads(line)['step'] for line in f]
  assert max(logged) < bad_step


def test_first_nonfinite_names_the_metric():
  assert metrics.first_nonfinite({'loss': 1.0, 'grad_norm': float('inf')}) == 'grad_norm'
  assert metrics.first_nonfinite({'loss': 1.0}) is None


def test_keep_step_zero_saves_the_initialization(tmp_path):
  from dynamics import checkpoint
  config = wsd.get_config('smoke')
  config.num_steps = 10
  config.checkpoint.keep_steps = (0,)
  config.checkpoint.async_save = False
  train.train_and_evaluate(config, str(tmp_path))
  assert checkpoint.available_steps(str(tmp_path))[0] == 0
  run = Run.open(str(tmp_path))
  state0 = run.state(0)
  init = Run(config).init_state()
  for a, b in zip(jax.tree.leaves(state0.params), jax.tree.leaves(init.params)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(FileNotFoundError, match=r'no checkpoint at step 3 .* available steps: \[0, 10\]'):
    run.state(3)
