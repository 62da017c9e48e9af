"""⊥Grad: remove the gradient's component along the weights (Prieto et al., 2025).

Grokking with cross-entropy often proceeds by "naive loss minimization":
scaling the logits up along the current weight direction, which lowers the
training loss without changing predictions and ends in floating-point
Softmax Collapse. ⊥Grad keeps only the part of each parameter's gradient
orthogonal to that parameter, so this direction is never followed.
"""

import jax
import jax.numpy as jnp
import optax



def orthograd(eps: float = 1e-30) -> optax.GradientTransformation:
  """Projects each gradient onto the orthogonal complement of its parameter.

  For every parameter tensor ``w`` (flattened) with gradient ``g``:

  .. math::

     g_\\perp = g - \\frac{w^\\top g}{w^\\top w + \\epsilon} w, \\qquad
     g \\leftarrow g_\\perp \\frac{\\|g\\|}{\\|g_\\perp\\| + \\epsilon}

  so the returned gradient is orthogonal to ``w`` and has the norm of the
  original one (the reference implementation's rescaling). Chain it before
  the optimizer: ``optax.chain(orthograd(), optax.adamw(...))``.

  Args:
    eps: guards the divisions (the reference uses ``1e-30``).

  Returns:
    A stateless ``optax.GradientTransformation``; ``update`` needs ``params``.

  Example:
    >>> tx = optax.chain(orthograd(), optax.sgd(0.1))
    >>> w = {'w': jnp.array([1.0, 0.0])}
    >>> g, _ = tx.update({'w': jnp.array([3.0, 4.0])}, tx.init(w), w)
    >>> bool(jnp.allclose(g['w'], jnp.array([0.0, -0.5])))  # -0.1 * (0, 5)
    True

  References:
    Prieto, Barsbey, Mediano and Birdal, "Grokking at the Edge of Numerical
    Stability", ICLR 2025. https://arxiv.org/abs/2501.04697
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('orthograd needs params: tx.update(grads, state, params)')

    def project(g, w):
      gf, wf = jnp.ravel(g), jnp.ravel(w).astype(g.dtype)
      coeff = jnp.vdot(wf, gf) / (jnp.vdot(wf, wf) + eps)
      g_orth = gf - coeff * wf
      scale = jnp.linalg.norm(gf) / (jnp.linalg.norm(g_orth) + eps)
      return (g_orth * scale).reshape(g.shape)

    return jax.tree.map(project, updates, params), state

  return optax.GradientTransformation(init_fn, update_fn)
