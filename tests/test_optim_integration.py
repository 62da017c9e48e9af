"""Every configured optimizer runs inside the core's train_step and resumes."""

import jax
import numpy as np
import pytest

from configs import wsd
from dynamics import checkpoint, optim, train

jax.config.update('jax_numpy_rank_promotion', 'raise')


def _parts(name, **sam):
  config = wsd.get_config('smoke')
  config.optimizer.name = name
  config.log_every = 1  # Norms on every step.
  for k, v in sam.items():
    config.optimizer.sam[k] = v
  parts = train.build(config)
  return config, parts, train.init_state(config, parts)


@pytest.mark.parametrize('name', optim.OPTIMIZERS)
def test_optimizer_trains_under_jit_and_its_state_restores(name, tmp_path):
  _, parts, state = _parts(name)
  step = train.make_train_step(parts)
  batches = [train._to_device(parts.dataset.train_batch(i)) for i in range(4)]
  for b in batches[:2]:
    state, m = step(state, b)
  assert np.isfinite(float(m['loss']))
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(2, state, {'position': 2})
  restored, _ = ckpt.restore(2, jax.eval_shape(lambda: state))
  ckpt.close()
  # The restored state continues exactly like the live one.
  a, _ = step(restored, batches[2])
  b, _ = step(state, batches[2])
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)


def test_sam_in_the_train_step():
  _, parts, state = _parts('sgd', rho=0.0)
  _, plain_parts, plain_state = _parts('sgd')
  batch = train._to_device(plain_parts.dataset.train_batch(0))
  sam_state, sam_m = train.make_train_step(parts)(state, batch)
  ref_state, ref_m = train.make_train_step(plain_parts)(plain_state, batch)
  # rho = 0: the SAM gradient is the plain gradient.
  np.testing.assert_allclose(sam_m['grad_norm'], ref_m['grad_norm'], rtol=1e-5)
  for x, y in zip(jax.tree.leaves(sam_state.params), jax.tree.leaves(ref_state.params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
  _, parts, state = _parts('sgd', rho=0.5)
  _, m = train.make_train_step(parts)(state, batch)
  # Same loss (the unperturbed point), a different gradient.
  np.testing.assert_allclose(m['loss'], ref_m['loss'], rtol=1e-6)
  assert abs(float(m['grad_norm']) - float(ref_m['grad_norm'])) > 1e-4
