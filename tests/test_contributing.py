"""CONTRIBUTING.md's worked examples, registered exactly as the page shows.

Each code block whose first line is ``# file: PATH ...`` is run in the
namespace of the module it names (an entry of a dict is evaluated as one),
then used: the optimizer trains a step and matches its rule by hand, the
curvature matrix's eigenvalues are the Hessian's plus one, the probe logs
the parameter norm of the checkpoint it saw.
"""

import os
import re
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import wsd
from dynamics import config_schema, errors, optim, runs, step as step_lib, train
from dynamics.probes import Probe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blocks():
  """``{first line: code}`` of the page's ``# file:`` blocks."""
  with open(os.path.join(ROOT, 'CONTRIBUTING.md')) as f:
    text = f.read()
  out = {}
  for code in re.findall(r'```python\n(.*?)```', text, flags=re.S):
    first, _, rest = code.partition('\n')
    if first.startswith('# file: '):
      out[first[len('# file: '):]] = rest
  return out


BLOCKS = _blocks()


def _block(prefix):
  found = [code for head, code in BLOCKS.items() if head.startswith(prefix)]
  assert len(found) == 1, (prefix, list(BLOCKS))
  return found[0]


def _entry(code, namespace):
  """``(key, value)`` of a dict entry written as ``'key': value,``."""
  return next(iter(eval('{' + code + '}', namespace).items()))  # pylint: disable=eval-used


def test_the_page_has_every_example():
  assert {h.split(' ')[0] for h in BLOCKS} == {
      'dynamics/optim/normalized_sgd.py', 'dynamics/optim/__init__.py',
      'dynamics/config_schema.py', 'analysis/hessian/registry.py',
      'analysis/probes.py'}


@pytest.fixture
def normalized_sgd(monkeypatch):
  """The optimizer registered through its three blocks."""
  module = {}
  exec(_block('dynamics/optim/normalized_sgd.py'), module)  # pylint: disable=exec-used
  name, entry = _entry(_block('dynamics/optim/__init__.py'), {
      **vars(optim), 'errors': errors,
      'normalized_sgd': module['normalized_sgd']})
  monkeypatch.setitem(optim.OPTIMIZERS, name, entry)
  defaults = config_schema.defaults

  def with_section():
    c = defaults()
    with c.unlocked():
      exec(_block('dynamics/config_schema.py'),  # pylint: disable=exec-used
           {'o': c.optimizer, 'ml_collections': ml_collections})
    return c

  monkeypatch.setattr(config_schema, 'defaults', with_section)
  return name


def test_a_new_optimizer_trains_and_follows_its_rule(normalized_sgd):
  config = wsd.get_config('smoke')
  with config.unlocked():
    config.optimizer.normalized_sgd = config_schema.defaults(
    ).optimizer.normalized_sgd
  config.optimizer.name = normalized_sgd
  config.optimizer.weight_decay = 0.0
  config.optimizer.clip_norm = None  # Clipping to norm 1 would hide the rule.
  from dynamics import config_lib
  config_lib.validate(config)
  config.optimizer.normalized_sgd.eps = -1.0
  with pytest.raises(errors.ConfigError,
                     match=r'optimizer\.normalized_sgd\.eps=-1\.0'):
    config_lib.validate(config)
  config.optimizer.normalized_sgd.eps = 1e-12
  run = runs.Run(config)
  state = run.init_state()
  batch = jax.tree.map(jnp.asarray, run.dataset.train_batch(0))
  _, _, grads = step_lib.accumulated_gradient(
      state.params, state.model_state, batch,
      jax.random.fold_in(state.rng, state.step), model=run.model,
      options=run.options)
  lr = float(run.schedule(0))
  params_0 = jax.tree.map(np.asarray, state.params)
  new, _ = run.train_step(state, batch)
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  g = flat(grads)
  # atol: float32 rounding of parameters near 1 (LayerNorm scales).
  step = flat(new.params) - flat(params_0)
  np.testing.assert_allclose(step, -lr * g / np.linalg.norm(g), rtol=1e-4,
                             atol=2e-7)
  assert np.linalg.norm(step) == pytest.approx(lr, rel=1e-3)


def test_a_new_curvature_matrix_is_the_hessian_plus_one(monkeypatch):
  from analysis import hessian
  from analysis.hessian import registry
  namespace = vars(registry).copy()
  exec(_block('analysis/hessian/registry.py (a product'), namespace)  # pylint: disable=exec-used
  name, product = _entry(_block('analysis/hessian/registry.py (an entry'),
                         namespace)
  monkeypatch.setitem(registry.PRODUCTS, name, product)
  loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)  # H = diag(b)
  op = hessian.curvature(name, jnp.zeros(4), [jnp.array([1., 2., 3., 5.])],
                         loss_fn=loss)
  vals, _ = hessian.top_eigenpairs(op, k=2)
  np.testing.assert_allclose(np.asarray(vals), [6.0, 4.0], rtol=1e-5)


class _StopAt(Probe):
  """Ctrl-C at ``step``."""
  name, every = 'stop_at', 1

  def __init__(self, step):
    self.step = step

  def __call__(self, state, run):
    if int(state.step) == self.step:
      raise KeyboardInterrupt
    return {}


def test_a_new_probe_logs_what_it_measures():
  from analysis import probes
  namespace = vars(probes).copy()
  exec(_block('analysis/probes.py'), namespace)  # pylint: disable=exec-used
  config = wsd.get_config('smoke')
  config.num_steps = 20
  init = runs.Run(config).init_state().params
  with tempfile.TemporaryDirectory() as workdir:
    # Killed after step 10's checkpoint, then resumed: the series continues.
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(config, workdir, probes=[
          namespace['DistanceFromInitProbe'](10), _StopAt(12)])
    train.train_and_evaluate(config, workdir,
                             probes=[namespace['DistanceFromInitProbe'](10)])
    run = runs.Run.open(workdir)
    logged = {m['step']: m['distance_from_init'] for m in run.metrics()
              if 'distance_from_init' in m}
    params = run.params(20)
  assert sorted(logged) == [0, 10, 20]
  distance = np.sqrt(sum(np.sum(np.square(a - b)) for a, b in zip(
      jax.tree.leaves(params), jax.tree.leaves(init))))
  assert logged[0] == 0.0
  assert logged[20] == pytest.approx(float(distance), rel=1e-5)
