"""Lanczos on 8 host devices: the basis is laid out like the FSDP-sharded
parameters, and the answer is the unsharded one.

One subprocess (``XLA_FLAGS=--xla_force_host_platform_device_count=8``) runs
every check and prints one JSON line; the tests read it.
"""

import functools
import json
import os
import sys

import numpy as np

import host_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child():
  import jax
  import jax.numpy as jnp
  import ml_collections
  from analysis import hessian as hs
  from analysis import lanczos as lz
  from dynamics import sharding as sharding_lib
  from jax.sharding import NamedSharding, PartitionSpec as P

  rng = np.random.default_rng(0)
  # An MLP 32 -> 64 -> 64 -> 8: its kernels (2,048 + 4,096 + 512 entries)
  # are split over fsdp = 8, the biases (136) are replicated.
  sizes = [(32, 64), (64, 64), (64, 8)]
  params = {f'dense_{i}': {'kernel': jnp.asarray(rng.normal(size=s) / np.sqrt(
      s[0]), jnp.float32), 'bias': jnp.zeros(s[1], jnp.float32)}
            for i, s in enumerate(sizes)}
  batch = {'inputs': rng.normal(size=(64, 32)).astype(np.float32),
           'targets': rng.integers(0, 8, size=64)}

  def loss_fn(p, b):
    x = b['inputs']
    for i in range(3):
      x = x @ p[f'dense_{i}']['kernel'] + p[f'dense_{i}']['bias']
      x = jnp.tanh(x) if i < 2 else x
    logz = jax.nn.logsumexp(x, axis=-1)
    return jnp.mean(logz - jnp.take_along_axis(x, b['targets'][:, None],
                                               axis=-1)[:, 0])

  ref, _, ref_info = hs.top_eigenpairs(
      hs.curvature('hessian', params, [batch, batch], loss_fn=loss_fn), k=3,
      return_info=True)
  mesh = sharding_lib.make_mesh(ml_collections.ConfigDict(
      {'data': 1, 'fsdp': 8}))
  shardings = sharding_lib.tree_shardings(mesh, params, 256)
  sharded = jax.device_put(params, shardings)
  batches = [jax.device_put(batch, NamedSharding(mesh, P(('data', 'fsdp'))))
             ] * 2
  got, vecs, info = hs.top_eigenpairs(
      hs.curvature('hessian', sharded, batches, loss_fn=loss_fn), k=3,
      return_info=True)
  # The basis itself, laid out like the parameters.
  op = hs.hvp_fn(loss_fn, sharded, batches)
  state, space = lz.run_steps(op, sharded, 32, key=jax.random.PRNGKey(0))
  device = jax.devices()[0]
  total = sum(b.nbytes for b in jax.tree.leaves(state.basis))
  on_one = sum(s.data.nbytes for b in jax.tree.leaves(state.basis)
               for s in b.addressable_shards if s.device == device)
  def spec(x):  # PartitionSpec as a list, one entry per axis.
    entries = list(x.sharding.spec)
    return [str(e) for e in entries + [None] * (x.ndim - len(entries))]

  return {'ref': np.asarray(ref).tolist(), 'got': np.asarray(got).tolist(),
          'converged': [ref_info['converged'], info['converged']],
          'hvps': [ref_info['num_hvps'], info['num_hvps']],
          'flat': space.flat, 'basis_fraction_on_one_device': on_one / total,
          'basis_kernel_spec': spec(state.basis['dense_1']['kernel']),
          'param_kernel_spec': spec(sharded['dense_1']['kernel']),
          'eigvec_kernel_spec': spec(vecs[0]['dense_1']['kernel'])}


@functools.lru_cache(maxsize=None)
def _results():
  return host_devices.child_results(__file__, 8)


def test_sharded_top_eigenpairs_equal_the_unsharded_ones():
  r = _results()
  assert all(r['converged'])
  np.testing.assert_allclose(r['got'], r['ref'], rtol=1e-4)


def test_the_basis_is_laid_out_like_the_parameters():
  """Not gathered: each device holds ~1/8 of the basis (the replicated
  biases are 2% of it), split like the parameters it spans."""
  r = _results()
  assert not r['flat']
  assert r['param_kernel_spec'] == ['fsdp', 'None']
  assert r['basis_kernel_spec'] == ['None', 'fsdp', 'None']
  assert r['eigvec_kernel_spec'] == r['param_kernel_spec']
  assert 1 / 8 <= r['basis_fraction_on_one_device'] < 0.15, r


if __name__ == '__main__' and sys.argv[1:] == ['--child']:
  sys.path.insert(0, ROOT)
  print('RESULT ' + json.dumps(_child()), flush=True)
