"""Every configured optimizer runs inside the core's train_step and resumes."""

import jax
import numpy as np
import pytest

from configs import wsd
from dynamics import checkpoint, optim
from dynamics.runs import Run

jax.config.update('jax_numpy_rank_promotion', 'raise')


def _device(batch):
  return jax.tree.map(jax.numpy.asarray, batch)


def _parts(name, **sam):
  config = wsd.get_config('smoke')
  config.optimizer.name = name
  config.log_every = 1  # Norms on every step.
  if name == 'prodigy':  # Its weight decay has no mask (a one-line error).
    config.optimizer.weight_decay_mask = 'all'
  for k, v in sam.items():
    config.optimizer.sam[k] = v
  run = Run(config)
  return config, run, run.init_state()


@pytest.mark.parametrize('name', optim.OPTIMIZERS)
def test_optimizer_trains_under_jit_and_its_state_restores(name, tmp_path):
  _, run, state = _parts(name)
  step = run.train_step
  batches = [_device(run.dataset.train_batch(i)) for i in range(4)]
  for b in batches[:2]:
    state, m = step(state, b)
  assert np.isfinite(float(m['loss']))
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(2, state, {'position': 2})
  restored = ckpt.restore(2, jax.eval_shape(lambda: state)).state
  ckpt.close()
  # The restored state continues exactly like the live one.
  a, _ = step(restored, batches[2])
  b, _ = step(state, batches[2])
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)


def test_sam_in_the_train_step():
  _, run, state = _parts('sgd', rho=0.0)
  _, plain_run, plain_state = _parts('sgd')
  batch = _device(plain_run.dataset.train_batch(0))
  sam_state, sam_m = run.train_step(state, batch)
  ref_state, ref_m = plain_run.train_step(plain_state, batch)
  # rho = 0: the SAM gradient is the plain gradient.
  np.testing.assert_allclose(sam_m['grad_norm'], ref_m['grad_norm'], rtol=1e-5)
  for x, y in zip(jax.tree.leaves(sam_state.params), jax.tree.leaves(ref_state.params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
  _, run, state = _parts('sgd', rho=0.5)
  _, m = run.train_step(state, batch)
  # Same loss (the unperturbed point), a different gradient.
  np.testing.assert_allclose(m['loss'], ref_m['loss'], rtol=1e-6)
  assert abs(float(m['grad_norm']) - float(ref_m['grad_norm'])) > 1e-4
