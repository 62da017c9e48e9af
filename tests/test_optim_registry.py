"""The optimizer registry: each name's entry builds from its own config
section, carries its muP family and checks its section."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import base
from dynamics import config_lib, config_migrate, optim, parametrization

jax.config.update('jax_numpy_rank_promotion', 'raise')

PARAMS = {'w': jnp.array([[1.0, -2.0], [0.5, 3.0]]), 'b': jnp.array([0.1, -0.2])}
GRADS = {'w': jnp.array([[0.3, -0.1], [0.2, 0.4]]), 'b': jnp.array([-0.5, 0.25])}


def _updates(tx, steps=3):
  """The parameters after ``steps`` updates on gradients that change every
  step (with a constant gradient, Adam's bias-corrected moments hide b1, b2)."""
  state, params = tx.init(PARAMS), PARAMS
  for t in range(steps):
    grads = jax.tree.map(lambda g: g * (1.0 + t) * (-1.0) ** t, GRADS)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_the_sections_are_the_registry():
  """One name list: the registry's keys. Each optimizer's section (if any)
  is declared under its name, and nothing else is an optimizer section."""
  sections = config_migrate.optimizer_sections(base.get_config().optimizer)
  assert set(sections) <= set(optim.OPTIMIZERS)
  for name, entry in optim.OPTIMIZERS.items():
    assert (entry.check is None) == (name not in sections), name
    assert entry.family in parametrization.MUP_RULES, name


@pytest.mark.parametrize('name', optim.OPTIMIZERS)
def test_every_default_section_passes_its_check(name):
  c = base.get_config()
  c.optimizer.name = name
  optim.check(c)


def test_an_optimizer_reads_only_its_own_section():
  c = base.get_config().optimizer
  c.name, c.learning_rate = 'adamw', 0.1
  c.adamw.b1, c.adamw.b2 = 0.8, 0.9
  c.adam.b2 = 0.5  # Another optimizer's section: not read.
  got = _updates(optim.build_optimizer(c, optax.constant_schedule(0.1)))
  expected = _updates(optax.adamw(0.1, b1=0.8, b2=0.9, eps=1e-8,
                                  weight_decay=0.0,
                                  mask=optim.weight_decay_mask('matrices')))
  _assert_same(got, expected)
  assert optim.hyperparameters(c) is c.adamw


def test_coupled_l2_for_the_optimizers_that_do_not_decouple():
  c = base.get_config().optimizer
  c.name, c.weight_decay, c.weight_decay_mask = 'momentum', 0.1, 'all'
  c.momentum.momentum, c.momentum.nesterov = 0.5, True
  got = _updates(optim.build_optimizer(c, 0.05))
  expected = _updates(optax.chain(
      optax.add_decayed_weights(0.1, optim.weight_decay_mask('all')),
      optax.sgd(0.05, momentum=0.5, nesterov=True)))
  _assert_same(got, expected)


def test_sgd_has_no_section():
  c = base.get_config().optimizer
  c.name = 'sgd'
  assert dict(optim.hyperparameters(c)) == {}
  _assert_same(_updates(optim.build_optimizer(c, 0.1)),
               _updates(optax.sgd(0.1)))


def test_mup_asks_the_registry_for_the_family(monkeypatch):
  """A new optimizer gets muP's rules through its entry's family alone."""
  toy = optim.Entry(lambda h, o, lr: optax.sgd(lr), family='adam')
  monkeypatch.setitem(optim.OPTIMIZERS, 'toy', toy)
  m = ml_collections.ConfigDict(dict(name='mlp', hidden_sizes=(256,),
                                     base_width=64))
  assert (parametrization.mup_lr_multipliers(m, 'toy')
          == parametrization.mup_lr_multipliers(m, 'adamw'))
  monkeypatch.setitem(optim.OPTIMIZERS, 'toy', optim.Entry(
      toy.build, family='sgd'))
  assert (parametrization.mup_lr_multipliers(m, 'toy')
          == parametrization.mup_lr_multipliers(m, 'momentum'))


def test_a_section_check_names_the_section_field():
  c = base.get_config()
  c.optimizer.name = 'sgdp'
  c.optimizer.sgdp.momentum = 1.0
  with pytest.raises(config_lib.ConfigError,
                     match=r'config.optimizer.sgdp.momentum=1.0: must be in '
                     r'\[0, 1\)'):
    optim.check(c)
  c.optimizer.sgdp.momentum = 0.9
  c.optimizer.adamp.delta = -1.0  # Not selected: not checked.
  optim.check(c)


def test_a_flat_field_applies_without_validate(caplog):
  """A config built straight into a `Run` (no `validate`) still honours a
  deprecated flat field, with the notice, and is left unchanged."""
  c = base.get_config().optimizer
  c.name, c.b2 = 'adamw', 0.5
  assert optim.hyperparameters(c).b2 == 0.5
  assert c.adamw.b2 == 0.95 and c.b2 == 0.5
  assert any('optimizer.b2 is deprecated' in r.getMessage()
             for r in caplog.records)
  _assert_same(_updates(optim.build_optimizer(c, 0.1)), _updates(optax.adamw(
      0.1, b2=0.5, weight_decay=0.0, mask=optim.weight_decay_mask('matrices'))))
