"""⊥Grad: the gradient loses its component along the weights, keeps its norm."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dynamics.optim.orthograd import orthograd

jax.config.update('jax_numpy_rank_promotion', 'raise')


def test_projection_is_orthogonal_and_norm_preserving():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  params = {'w': jax.random.normal(k1, (4, 3)), 'b': jnp.array([2.0, 0.0])}
  grads = {'w': jax.random.normal(k2, (4, 3)), 'b': jnp.array([1.0, 1.0])}
  tx = orthograd()
  out, _ = tx.update(grads, tx.init(params), params)
  for name in params:
    w, g, o = (np.ravel(t[name]) for t in (params, grads, out))
    assert abs(np.dot(o, w)) < 1e-5 * np.linalg.norm(w) * np.linalg.norm(g)
    np.testing.assert_allclose(np.linalg.norm(o), np.linalg.norm(g), rtol=1e-6)
  # b = (2, 0), g = (1, 1): g_perp = (0, 1), rescaled to norm sqrt(2).
  np.testing.assert_allclose(out['b'], [0.0, np.sqrt(2.0)], atol=1e-7)


def test_chained_with_sgd_never_moves_along_the_weights():
  tx = optax.chain(orthograd(), optax.sgd(0.1))
  w = {'w': jnp.array([1.0, 0.0])}
  upd, _ = tx.update({'w': jnp.array([3.0, 4.0])}, tx.init(w), w)
  np.testing.assert_allclose(upd['w'], [0.0, -0.5], atol=1e-7)


def test_zero_weights_leave_the_gradient_unchanged():
  tx = orthograd()
  w = {'w': jnp.zeros(3)}
  g = {'w': jnp.array([1.0, -2.0, 3.0])}
  out, _ = tx.update(g, tx.init(w), w)
  np.testing.assert_allclose(out['w'], g['w'], rtol=1e-6)
