"""The optimizer catalog (dynamics/optim/catalog.py): every name trains the
smoke config, each matches optax called directly, schedule-free AdamW is
evaluated at its averaged point, and resume/branch give the same bits."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest

from configs import wsd
from dynamics import config_lib
from dynamics import config_schema
from dynamics import optim
from dynamics import runs
from dynamics import train
from dynamics.optim import catalog

jax.config.update('jax_numpy_rank_promotion', 'raise')

CATALOG = ('nadamw', 'lion', 'adafactor', 'muon', 'schedule_free_adamw',
           'ademamix', 'adopt', 'prodigy', 'signum', 'sophia')


def _smoke(name: str, steps: int = 3, tiny: bool = False, **overrides):
  c = wsd.get_config('smoke')
  c.optimizer.name = name
  if tiny:  # One block: the resume, branch and merge checks compile faster.
    c.model.num_layers = 1
  c.num_steps, c.eval_every, c.log_every = steps, steps, 1
  c.eval_batches = 1
  c.checkpoint.every_steps, c.checkpoint.async_save = 2, False
  c.schedule.warmup_steps = 1
  c.schedule.decay_fraction = 0.5
  if name == 'prodigy':  # Its decay has no mask; its rate multiplies d.
    c.optimizer.weight_decay_mask, c.optimizer.learning_rate = 'all', 1.0
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split('.')
    for part in path:
      node = node[part]
    node[leaf] = value
  return c


@pytest.mark.parametrize('name', CATALOG)
def test_each_catalog_name_trains_the_smoke_config(name, tmp_path):
  c = _smoke(name)
  state = train.train_and_evaluate(c, str(tmp_path))
  run = runs.Run.open(str(tmp_path))
  start = run.init_state().params
  moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(state.params), jax.tree.leaves(start))]
  assert int(state.step) == 3 and max(moved) > 0
  last = [m for m in run.metrics() if 'eval_loss' in m][-1]
  assert last['step'] == 3 and np.isfinite(last['eval_loss'])


# ---------------------------------------------------------------------------
# The first steps against optax called directly.

_PARAMS = {'w': jnp.linspace(-1., 1., 12).reshape(4, 3),
           'b': jnp.array([0.1, -0.2, 0.3]),
           'embed': {'embedding': jnp.linspace(0.5, -0.5, 10).reshape(5, 2)}}


def _loss(p):
  return (jnp.sum(jnp.sin(p['w']) ** 2) + jnp.sum((p['b'] - 1.0) ** 3)
          + jnp.sum(p['embed']['embedding'] ** 4))


def _schedule(t):
  return 0.01 * (t + 1.0) / 3.0


def _direct(name, h, wd):
  """optax's own function, with the section's values."""
  if name == 'nadamw':
    return optax.nadamw(_schedule, b1=h.b1, b2=h.b2, eps=h.eps,
                        weight_decay=wd)
  if name == 'lion':
    return optax.lion(_schedule, b1=h.b1, b2=h.b2, weight_decay=wd)
  if name == 'adafactor':
    return optax.adafactor(
        _schedule, min_dim_size_to_factor=h.min_dim_size_to_factor,
        decay_rate=h.decay_rate, multiply_by_parameter_scale=True,
        clipping_threshold=h.clipping_threshold, weight_decay_rate=wd,
        eps=h.eps)
  if name == 'muon':
    dims = {'w': optax.contrib.MuonDimensionNumbers(), 'b': None,
            'embed': {'embedding': None}}
    return optax.contrib.muon(
        _schedule, ns_steps=h.ns_steps, beta=h.beta, eps=h.eps,
        weight_decay=wd, adam_b1=h.adam_b1, adam_b2=h.adam_b2,
        muon_weight_dimension_numbers=dims)
  if name == 'schedule_free_adamw':
    return optax.contrib.schedule_free_adamw(
        _schedule, b1=h.b1, b2=h.b2, eps=h.eps, weight_decay=wd,
        weight_lr_power=h.weight_lr_power)
  if name == 'ademamix':
    return optax.contrib.ademamix(_schedule, b1=h.b1, b2=h.b2, b3=h.b3,
                                  alpha=h.alpha, eps=h.eps, weight_decay=wd)
  if name == 'adopt':  # optax's adopt has no weight decay.
    return optax.contrib.adopt(_schedule, b1=h.b1, b2=h.b2, eps=h.eps)
  if name == 'prodigy':
    return optax.contrib.prodigy(_schedule, betas=(h.b1, h.b2), eps=h.eps,
                                 weight_decay=wd)
  if name == 'signum':  # optax's signum has no weight decay.
    return optax.signum(_schedule, beta=h.beta)
  if name == 'sophia':
    return optax.contrib.sophia(_schedule, b1=h.b1, b2=h.b2, eps=h.eps,
                                weight_decay=wd, gamma=h.gamma,
                                clip_threshold=h.clip_threshold,
                                update_interval=h.update_interval)
  raise AssertionError(name)


def _steps(tx, n=3, obj_fn=None):
  params, state, out = _PARAMS, tx.init(_PARAMS), []
  extra = {} if obj_fn is None else {'obj_fn': obj_fn}  # Sophia's loss.
  for _ in range(n):
    updates, state = tx.update(jax.grad(_loss)(params), state, params,
                               **extra)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out


def _built(name, wd, mask='all', **section):
  c = config_schema.defaults()
  c.optimizer.name, c.optimizer.weight_decay = name, wd
  c.optimizer.weight_decay_mask = mask
  for k, v in section.items():
    c.optimizer[name][k] = v
  c.optimizer.adafactor.min_dim_size_to_factor = 2  # Factor the 4x3 leaf.
  return optim.build_optimizer(c.optimizer, _schedule), c.optimizer[name]


@pytest.mark.parametrize('name', CATALOG)
def test_first_three_steps_match_optax_called_directly(name):
  wd = 0.0 if name in ('adopt', 'signum') else 0.1
  # Sophia: Hessian estimates at steps 0 and 2, from the loss it is given;
  # unclipped, so that they show in the steps.
  section = ({'update_interval': 2, 'clip_threshold': None}
             if name == 'sophia' else {})
  ours, h = _built(name, wd, **section)
  obj_fn = _loss if name == 'sophia' else None
  for got, want in zip(_steps(ours, obj_fn=obj_fn),
                       _steps(_direct(name, h, wd), obj_fn=obj_fn)):
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('name', ['adopt', 'signum'])
def test_added_decay_is_decoupled_and_masked(name):
  """u = u_optax - lr_t * wd * p on the matrices only ('matrices' mask)."""
  wd = 0.5
  ours, h = _built(name, wd, mask='matrices')
  plain = _direct(name, h, 0.0)
  grads = jax.grad(_loss)(_PARAMS)
  got, _ = ours.update(grads, ours.init(_PARAMS), _PARAMS)
  want, _ = plain.update(grads, plain.init(_PARAMS), _PARAMS)
  lr = _schedule(0)
  want = jax.tree.map(lambda u, p: u - lr * wd * p * (p.ndim >= 2), want,
                      _PARAMS)
  chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


def test_muon_leaves_embeddings_and_non_matrices_to_adamw():
  fn = catalog.muon_dimension_numbers(
      config_schema.defaults().optimizer.muon.adam_params)
  dims = fn({'block/mlp/kernel': jnp.ones((2, 3)), 'embed': jnp.ones((4, 2)),
             'head': {'kernel': jnp.ones((2, 4))}, 'bias': jnp.ones(3),
             'qkv': jnp.ones((2, 3, 1, 2))})
  assert dims['block/mlp/kernel'] == optax.contrib.MuonDimensionNumbers()
  assert [dims[k] for k in ('embed', 'bias', 'qkv')] == [None] * 3
  assert dims['head']['kernel'] is None


def test_bad_values_fail_naming_the_field():
  for name, field, value in (('lion', 'b2', 1.0), ('muon', 'ns_steps', 0),
                             ('muon', 'adam_params', '(embed'),
                             ('schedule_free_adamw', 'b1', 0.0),
                             ('adafactor', 'decay_rate', 0.0),
                             ('ademamix', 'alpha', -1.0),
                             ('sophia', 'update_interval', 0)):
    c = wsd.get_config('smoke')
    c.optimizer.name = name
    c.optimizer[name][field] = value
    with pytest.raises(config_lib.ConfigError,
                       match=rf'optimizer\.{name}\.{field}='):
      config_lib.validate(c)
  c = _smoke('prodigy', **{'optimizer.weight_decay_mask': 'matrices'})
  with pytest.raises(config_lib.ConfigError,
                     match='weight_decay_mask.*prodigy decays every'):
    runs.Run(c).parts  # pylint: disable=expression-not-assigned


# ---------------------------------------------------------------------------
# Schedule-free: evaluated at the averaged point.


def test_schedule_free_is_evaluated_at_its_averaged_point(tmp_path):
  state = train.train_and_evaluate(_smoke('schedule_free_adamw'),
                                   str(tmp_path))
  run = runs.Run.open(str(tmp_path))
  sf = state.opt_state[1]  # chain(clip_by_global_norm, schedule_free).
  assert isinstance(sf, optax.contrib.ScheduleFreeState)
  x = optax.contrib.schedule_free_eval_params(sf, state.params)
  logged = [m for m in run.metrics() if 'eval_loss' in m][-1]['eval_loss']
  at_x = run.evaluate(x, state.model_state)['loss']
  at_y = run.evaluate(state.params, state.model_state)['loss']
  assert abs(at_x - at_y) > 1e-6  # The two points differ measurably.
  np.testing.assert_allclose(logged, at_x, rtol=1e-6)
  chex.assert_trees_all_close(run.params(3), x, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_equal(run.restore(3)['params'], state.params)


# ---------------------------------------------------------------------------
# Resume, branch, accumulation.


class _Stop:
  """A probe that interrupts training at step ``at`` (after the checkpoint
  of the step before)."""
  name, every = 'stop', 1

  def __init__(self, at):
    self.at = at

  def __call__(self, state, run):
    if int(state.step) == self.at:
      raise KeyboardInterrupt(f'stopped at {self.at}')
    return {}

  def state_dict(self):
    return {}

  def load_state_dict(self, saved):
    del saved


@pytest.mark.parametrize('name,accum', [('muon', 1),
                                        ('schedule_free_adamw', 2),
                                        ('lion', 1)])
def test_resume_equals_an_uninterrupted_run(name, accum, tmp_path):
  c = _smoke(name, steps=4, tiny=True,
             **{'optimizer.grad_accum_steps': accum})
  full = train.train_and_evaluate(c, str(tmp_path / 'full'))
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(c, str(tmp_path / 'cut'), probes=[_Stop(3)])
  assert max(runs.Run.open(str(tmp_path / 'cut')).steps) == 2
  resumed = train.train_and_evaluate(c, str(tmp_path / 'cut'))
  chex.assert_trees_all_equal(full.params, resumed.params)
  chex.assert_trees_all_equal(full.opt_state, resumed.opt_state)


def test_schedule_free_branch_continues_the_parent_state(tmp_path):
  """A branch from step 2 whose decay is the parent's own gives the parent's
  last steps: the branch continues z, the weight sum and the moments."""
  parent = _smoke('schedule_free_adamw', steps=4, tiny=True)
  done = train.train_and_evaluate(parent, str(tmp_path / 'parent'))
  branch = _smoke('schedule_free_adamw', steps=4, tiny=True)
  branch.branch.from_workdir = str(tmp_path / 'parent')
  branch.branch.from_step, branch.branch.decay_steps = 2, 2
  got = train.train_and_evaluate(branch, str(tmp_path / 'branch'))
  chex.assert_trees_all_close(got.params, done.params, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(got.opt_state, done.opt_state, rtol=1e-6,
                              atol=1e-7)



def test_schedule_free_merge_averages_the_evaluation_points(tmp_path):
  from experiments import merge  # pylint: disable=g-import-not-at-top
  from dynamics import merging  # pylint: disable=g-import-not-at-top
  c = _smoke('schedule_free_adamw', steps=4, tiny=True,
             **{'merge.interval': 1, 'merge.window': 2})
  train.train_and_evaluate(c, str(tmp_path / 'run'))
  run = runs.Run.open(str(tmp_path / 'run'))
  record = merge.merge_and_evaluate(str(tmp_path / 'run'),
                                    output=str(tmp_path / 'merged'))
  w = merging.merge_weights(c.merge.shape, 2)
  want = jax.tree.map(lambda a, b: w[0] * a + w[1] * b, run.params(3),
                      run.params(4))
  merged = runs.Run.open(str(tmp_path / 'merged'))
  chex.assert_trees_all_close(merged.params(4), want, rtol=1e-5, atol=1e-6)
  raw = run.state(4)
  np.testing.assert_allclose(record['eval_loss_raw'], run.evaluate(
      run.params(4), raw.model_state)['loss'], rtol=1e-6)
  np.testing.assert_allclose(record['eval_loss'], run.evaluate(
      want, raw.model_state)['loss'], rtol=1e-5)
