"""What a user would otherwise run, for `experiments.bench_hessian`: a plain
jitted Lanczos in JAX, and PyHessian's torch model of the same MLP."""

import jax
import jax.numpy as jnp
import numpy as np


def plain_lanczos(op, params, num_steps):
  """A plain jitted Lanczos with full reorthogonalization at a fixed number
  of HVPs, top-5 Ritz values: the baseline at equal HVPs."""
  from jax.flatten_util import ravel_pytree
  flat, unravel = ravel_pytree(params)

  @jax.jit
  def run(op, v0):
    def body(i, carry):
      q, alphas, betas, v = carry
      q = q.at[i].set(v)
      w = ravel_pytree(op(unravel(v)))[0]
      alpha = jnp.vdot(v, w)
      w = w - q.T @ (q @ w)             # Full reorthogonalization, twice.
      w = w - q.T @ (q @ w)
      beta = jnp.linalg.norm(w)
      return q, alphas.at[i].set(alpha), betas.at[i].set(beta), w / beta

    q = jnp.zeros((num_steps, flat.size), flat.dtype)
    carry = (q, jnp.zeros(num_steps), jnp.zeros(num_steps),
             v0 / jnp.linalg.norm(v0))
    _, alphas, betas, _ = jax.lax.fori_loop(0, num_steps, body, carry)
    tri = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    return jnp.linalg.eigvalsh(tri)[::-1][:5]

  v0 = jax.random.normal(jax.random.PRNGKey(0), flat.shape, flat.dtype)
  return lambda: run(op, v0)


def torch_mlp(params, batch):
  """The same MLP in torch (weights copied), and its data."""
  import torch
  kernels = [np.asarray(params['dense_0']['kernel']),
             np.asarray(params['head']['kernel'])]
  biases = [np.asarray(params['dense_0']['bias']),
            np.asarray(params['head']['bias'])]
  model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(),
                              torch.nn.Linear(64, 10))
  with torch.no_grad():
    for layer, k, b in zip((model[0], model[2]), kernels, biases):
      layer.weight.copy_(torch.from_numpy(k.T.copy()))
      layer.bias.copy_(torch.from_numpy(b.copy()))
  x = torch.from_numpy(np.asarray(batch['inputs'], np.float32).reshape(512, -1))
  y = torch.from_numpy(np.asarray(batch['targets'], np.int64))
  return model, x, y


class CountingHVP:
  """Counts PyHessian's HVPs (instrumentation of the benchmark only)."""

  def __init__(self, module):
    self.module, self.count = module, 0
    self.original = module.hessian_vector_product

  def __enter__(self):
    def counted(*args, **kwargs):
      self.count += 1
      return self.original(*args, **kwargs)
    self.module.hessian_vector_product = counted
    return self

  def __exit__(self, *exc):
    self.module.hessian_vector_product = self.original
