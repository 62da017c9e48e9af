"""The registry of curvature matrices: a new matrix is one product function
and one entry; the command's choices come from it, before JAX starts."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import hessian as hs
from analysis.hessian import checkpoints, registry

jax.config.update('jax_numpy_rank_promotion', 'raise')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _twice_the_hessian(params, batch, v, index, *, loss_fn):
  """A toy matrix: 2 H, through the registry's Hessian product."""
  hv = registry.hessian_product(params, batch, v, index, loss_fn=loss_fn)
  return jax.tree.map(lambda x: 2 * x, hv)


class _Run:
  """What `run_inputs` reads of a `dynamics.runs.Run`."""

  def __init__(self, loss_fn):
    self._loss_fn = loss_fn

  def loss_fn(self, model_state):
    del model_state
    return self._loss_fn


def test_a_new_matrix_is_one_product_and_one_entry(monkeypatch):
  """Registered by one dict entry, a matrix is built by `curvature` (which
  checks its inputs) and from a run by `run_inputs`, and every solver takes
  it: its eigenvalues and trace are twice the Hessian's, exactly."""
  monkeypatch.setitem(registry.PRODUCTS, 'twice_hessian', registry.Product(
      _twice_the_hessian, ('loss_fn',), 'twice the Hessian'))
  loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)   # H = diag(b)
  params, batches = jnp.zeros(4), [jnp.array([1.0, 2.0, 3.0, 5.0])]
  inputs = checkpoints.run_inputs(_Run(loss), 'twice_hessian')
  assert inputs == {'loss_fn': loss}
  op = hs.curvature('twice_hessian', params, batches, **inputs)
  vals, _ = hs.top_eigenpairs(op, k=2)
  np.testing.assert_allclose(np.asarray(vals), [10.0, 6.0], rtol=1e-5)
  estimate, _ = hs.trace(op, method='hutchinson', num_hvps=2)
  assert estimate == pytest.approx(22.0, rel=1e-6)
  with pytest.raises(ValueError, match=r"'twice_hessian' needs loss_fn"):
    hs.curvature('twice_hessian', params, batches)


def test_every_input_a_product_needs_comes_from_a_run():
  needs = {n for entry in registry.PRODUCTS.values() for n in entry.needs}
  assert needs == set(registry.INPUTS)
  assert set(checkpoints._FROM_RUN) == set(registry.INPUTS)  # pylint: disable=protected-access
  assert registry.KINDS == tuple(registry.PRODUCTS)


def test_the_command_lists_the_registry_before_jax_starts():
  """``python -m analysis.hessian --help`` imports the package (lazy) and
  the registry, not JAX, and offers exactly the registry's names."""
  code = ('import runpy, sys\n'
          "sys.argv = ['analysis.hessian', '--helpfull']\n"
          'try:\n'
          "  runpy.run_module('analysis.hessian', run_name='__main__',\n"
          '                   alter_sys=True)\n'
          'except SystemExit:\n'
          '  pass\n'
          "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in "
          "('jax', 'flax', 'optax', 'orbax')))\n")
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                        capture_output=True, text=True, timeout=120,
                        env={**os.environ, 'PYTHONPATH': ROOT})
  out = proc.stdout + proc.stderr
  assert 'LOADED []' in out, out[-3000:]
  kinds = '|'.join(registry.PRODUCTS)
  methods = '|'.join(registry.TRACE_METHODS)
  assert f'--kind: <{kinds}>' in out, out
  assert f'--trace_method: <{methods}>' in out, out
