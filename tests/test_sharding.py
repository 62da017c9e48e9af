"""Tests of dynamics/sharding.py: mesh, shardings, config checks, equivalence.

The multi-device checks run in one subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must be set
before JAX starts; this pytest process has one device). The subprocess is this
file run as a script: it trains a few steps of the smoke transformer on one
device, data-parallel (mesh 8x1) and FSDP (mesh 2x4) with each optimizer, and
prints the differences as JSON for the tests to assert on.
"""

import functools
import json
import os
import sys

import jax

jax.config.update('jax_numpy_rank_promotion', 'raise')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from configs import wsd  # noqa: E402
from dynamics import config_lib  # noqa: E402
from dynamics import sharding as sharding_lib  # noqa: E402
import host_devices  # noqa: E402

STEPS = 3
MIN_SIZE = 256  # Small enough that the smoke models' matrices get sharded.
# The smoke transformer runs adamw; the other optimizers run on a small MLP,
# which compiles in a third of the time (the suite runs on 2 CPU cores). SAM
# runs its second (perturbed) pass under the same shardings, Stable-SPAM its
# per-tensor statistics.
_MLP = {'model.name': 'mlp', 'data.name': 'teacher_student',
        'model.hidden_sizes': (64, 64)}
CASES = {
    'adamw': {},
    'adamp': dict(_MLP, **{'optimizer.name': 'adamp'}),
    'sgdp': dict(_MLP, **{'optimizer.name': 'sgdp',
                          'optimizer.learning_rate': 0.1}),
    'stable_spam': dict(_MLP, **{'optimizer.name': 'stable_spam'}),
    'sam_adamw': dict(_MLP, **{'optimizer.sam.rho': 0.05}),
}
LAYOUTS = {'dp': (8, 1), 'fsdp': (2, 4)}


def mesh_config(data, fsdp, min_size=1024):
  return ml_collections.ConfigDict(
      {'data': data, 'fsdp': fsdp, 'fsdp_min_size': min_size})


def smoke_config(**overrides):
  c = wsd.get_config('smoke')
  c.num_steps = 10
  c.schedule.warmup_steps = 2
  c.model.num_layers = 1  # One block: half the compile time, same code paths.
  # Attention's key bias has an exactly-zero gradient; with eps=1e-8 Adam
  # blows its float32 rounding noise (different on every layout) up to a
  # full step. A larger eps keeps the comparison about the sharding.
  c.optimizer.adamw.eps = 1e-6
  c.update_from_flattened_dict(overrides)
  return c


# ---------------------------------------------------------------------------
# Mesh shapes and partition specs (no devices needed).


def test_mesh_shape_defaults_to_all_devices_on_data():
  assert sharding_lib.mesh_shape(mesh_config(-1, 1), 8) == (8, 1)
  assert sharding_lib.mesh_shape(mesh_config(-1, 4), 8) == (2, 4)
  assert sharding_lib.mesh_shape(mesh_config(2, 4), 8) == (2, 4)


def test_mesh_shape_mismatch_names_the_values():
  with pytest.raises(sharding_lib.MeshError,
                     match=r'mesh.data=3 x config.mesh.fsdp=1 = 3 devices, '
                           r'but there are 8'):
    sharding_lib.mesh_shape(mesh_config(3, 1), 8)
  with pytest.raises(sharding_lib.MeshError,
                     match=r'mesh.fsdp=3 does not divide the device count \(8\)'):
    sharding_lib.mesh_shape(mesh_config(-1, 3), 8)


def test_fsdp_spec_splits_the_largest_divisible_axis():
  assert sharding_lib.fsdp_spec((32, 128), 4, 1024) == P(None, 'fsdp')
  assert sharding_lib.fsdp_spec((128, 32), 4, 1024) == P('fsdp', None)
  # Largest axis (130) not divisible by 4: the next one is used.
  assert sharding_lib.fsdp_spec((130, 64), 4, 1024) == P(None, 'fsdp')
  # Too small, nothing divisible, scalars, or no fsdp axis: replicated.
  assert sharding_lib.fsdp_spec((16, 32), 4, 1024) == P()
  assert sharding_lib.fsdp_spec((33, 35), 4, 1024) == P()
  assert sharding_lib.fsdp_spec((), 4, 1) == P()
  assert sharding_lib.fsdp_spec((32, 128), 1, 1) == P()


def test_single_device_mesh_and_batch_sharding():
  mesh = sharding_lib.make_mesh(mesh_config(-1, 1))
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 1}
  assert sharding_lib.batch_sharding(mesh).spec == P(('data', 'fsdp'))
  sharding_lib.check_batch(3, mesh)


# ---------------------------------------------------------------------------
# Bad input: clear errors before compiling.


def test_validate_rejects_mesh_not_matching_device_count():
  c = smoke_config(**{'mesh.data': 4})
  with pytest.raises(config_lib.ConfigError,
                     match=r'mesh.data=4 x config.mesh.fsdp=1 = 4 devices, '
                           r'but there are 8'):
    config_lib.validate(c, device_count=8)
  c = smoke_config(**{'mesh.fsdp': 3})
  with pytest.raises(config_lib.ConfigError, match=r'mesh.fsdp=3 does not divide'):
    config_lib.validate(c, device_count=8)
  config_lib.validate(smoke_config(**{'mesh.data': 2, 'mesh.fsdp': 4}),
                      device_count=8)


def test_validate_rejects_batch_not_divisible_by_mesh():
  c = smoke_config(**{'data.batch_size': 12, 'mesh.fsdp': 2})
  with pytest.raises(config_lib.ConfigError,
                     match=r'data.batch_size=12: must be divisible by the '
                           r'device count \(8\): the batch is split over '
                           r'mesh.data=4 x mesh.fsdp=2 devices'):
    config_lib.validate(c, device_count=8)
  config_lib.validate(smoke_config(**{'data.batch_size': 12}), device_count=4)


def test_distributed_request_from_config_and_environment():
  request = sharding_lib.distributed_request
  assert request(smoke_config(), environ={}) is None
  assert request(smoke_config(distributed=True), environ={}) == {}
  env = {'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234', 'JAX_NUM_PROCESSES': '4',
         'JAX_PROCESS_ID': '3'}
  assert request(None, environ=env) == dict(
      coordinator_address='10.0.0.1:1234', num_processes=4, process_id=3)
  slurm = {'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '2', 'SLURM_PROCID': '0',
           'SLURM_LOCALID': '0', 'SLURM_STEP_NODELIST': 'node[1-2]'}
  assert request(None, environ=slurm) == {}  # JAX reads SLURM's variables.
  assert request(None, environ={'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}) is None
  tpu = {'TPU_WORKER_HOSTNAMES': 'h0,h1', 'TPU_WORKER_ID': '1'}
  assert request(None, environ=tpu) == {}
  assert request(None, environ={'TPU_WORKER_HOSTNAMES': 'h0'}) is None


@pytest.mark.parametrize('env, message', [
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234', 'JAX_NUM_PROCESSES': '2'},
     r"only partly set: \{'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234', "
     r"'JAX_NUM_PROCESSES': '2'\} but \['JAX_PROCESS_ID'\] missing"),
    ({'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': '2',
      'JAX_PROCESS_ID': '2'}, r'JAX_PROCESS_ID=2 must be in \[0, '
     r'JAX_NUM_PROCESSES=2\)'),
    ({'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': 'two',
      'JAX_PROCESS_ID': '0'}, r"JAX_NUM_PROCESSES='two'.*must be integers"),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4', 'SLURM_PROCID': '0'},
     r"SLURM job 7 with SLURM_NTASKS=4 but \['SLURM_STEP_NODELIST', "
     r"'SLURM_LOCALID'\] not set: start each task with `srun`"),
    ({'TPU_WORKER_HOSTNAMES': 'h0,h1'},
     r'multi-host TPU slice \(2 hosts: h0,h1\) but TPU_WORKER_ID is not set'),
])
def test_partly_set_distributed_environment_is_named(env, message):
  with pytest.raises(sharding_lib.DistributedEnvError, match=message):
    sharding_lib.distributed_request(smoke_config(), environ=env)


# ---------------------------------------------------------------------------
# Multi-device equivalence (subprocess with 8 CPU devices).


def _tree_rel_err(a, b):
  """max |a - b| over all entries / max |a| over all entries."""
  a, b = jax.tree.leaves(a), jax.tree.leaves(b)
  scale = max(float(np.max(np.abs(x))) for x in a if x.size)
  return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b) if x.size
             ) / max(scale, 1e-30)


def _run_steps(parts, host_state, batches, shardings):
  from dynamics import step as step_lib
  step_fn = step_lib.make_train_step(parts.model, parts.tx, parts.schedule,
                                     parts.options, shardings)
  put = shardings.put_batch if shardings else (
      lambda b: jax.tree.map(jax.numpy.asarray, b))
  state = shardings.put_state(host_state) if shardings else jax.tree.map(
      jax.numpy.asarray, host_state)
  losses = []
  for b in batches:
    state, metrics = step_fn(state, put(b))
    losses.append(float(metrics['loss']))
  return state, losses


def _child_main():
  """Runs in the 8-device subprocess; prints one JSON line of results."""
  from dynamics import runs
  assert jax.device_count() == 8, jax.devices()
  out = {}
  for name, overrides in CASES.items():
    config = smoke_config(**overrides)
    parts = runs.build(config)
    host = jax.device_get(runs.init_state(config, parts))
    batches = [parts.dataset.train_batch(i) for i in range(STEPS)]
    ref, ref_losses = _run_steps(parts, host, batches, None)
    ref = jax.device_get(ref)
    layouts = LAYOUTS if name == 'adamw' else {'fsdp': LAYOUTS['fsdp']}
    for layout, (data, fsdp) in layouts.items():
      mesh = sharding_lib.make_mesh(mesh_config(data, fsdp))
      sh = sharding_lib.TrainShardings.create(mesh, host, MIN_SIZE)
      state, losses = _run_steps(parts, host, batches, sh)
      big = max(jax.tree.leaves(state.params), key=lambda x: x.size)
      out[f'{name}/{layout}'] = {
          'params_err': _tree_rel_err(ref.params, jax.device_get(state.params)),
          'opt_err': _tree_rel_err(ref.opt_state, jax.device_get(state.opt_state)),
          'loss_err': max(abs(a - b) for a, b in zip(ref_losses, losses)),
          'moved': _tree_rel_err(host.params, ref.params),
          'big_shape': list(big.shape),
          'big_spec': str(big.sharding.spec),
          'big_shard': list(big.addressable_shards[0].data.shape),
          # Moments are laid out like their parameters.
          'opt_specs': sorted({str(x.sharding.spec) for x in
                               jax.tree.leaves(state.opt_state)}),
      }
  out['hvp'] = _child_hvp()
  out['ntk'] = _child_ntk()
  print('RESULT ' + json.dumps(out), flush=True)


def _child_hvp():
  """Sharded (FSDP 2x4) vs unsharded HVP of the smoke model's loss."""
  try:
    from analysis import hessian
  except ImportError as e:
    return {'skipped': str(e)}
  from dynamics import runs
  run = runs.Run(smoke_config())
  state = jax.device_get(run.init_state())
  loss_fn = run.loss_fn(state.model_state)
  batches = run.probe_batches(2)
  v = jax.tree.map(lambda x: np.cos(np.arange(x.size, dtype=np.float32)
                                    ).reshape(x.shape), state.params)
  ref = jax.device_get(hessian.hvp_fn(loss_fn, state.params, batches)(v))
  mesh = sharding_lib.make_mesh(mesh_config(2, 4))
  sh = sharding_lib.TrainShardings.create(mesh, state, MIN_SIZE)
  params = sh.put_state(state).params
  vs = sharding_lib.put_global(v, sh.state.params)
  sharded_batches = [sh.put_full_batch(b) for b in batches]
  got = jax.device_get(hessian.hvp_fn(loss_fn, params, sharded_batches)(vs))
  return {'err': _tree_rel_err(ref, got),
          'norm': float(sum(np.sum(x ** 2) for x in jax.tree.leaves(ref)))}


def _child_ntk():
  """Sharded (FSDP 2x4, examples over the mesh) vs unsharded empirical NTK."""
  try:
    from analysis import ntk
  except ImportError as e:
    return {'skipped': str(e)}
  from dynamics import runs
  run = runs.Run(smoke_config(**CASES['adamp']))  # The MLP.
  state = jax.device_get(run.init_state())
  apply_fn = run.apply_fn(state.model_state)
  x = np.asarray(run.dataset.eval_batch(0)['inputs'][:8])
  ref = np.asarray(ntk.empirical_ntk(apply_fn, state.params, x))
  mesh = sharding_lib.make_mesh(mesh_config(2, 4))
  sh = sharding_lib.TrainShardings.create(mesh, state, MIN_SIZE)
  params = sh.put_state(state).params
  xs = sh.put_full_batch({'x': x})['x']
  got = np.asarray(ntk.empirical_ntk(apply_fn, params, xs))
  return {'err': float(np.max(np.abs(ref - got)) / np.max(np.abs(ref))),
          'shape': list(ref.shape),
          'sharded': str(params['dense_1']['kernel'].sharding.spec)}


@functools.lru_cache(maxsize=None)
def _child_results():
  return host_devices.child_results(__file__, 8)


@pytest.mark.parametrize('case', sorted(
    [f'{name}/fsdp' for name in CASES] + ['adamw/dp']))
def test_sharded_training_equals_single_device(case):
  r = _child_results()[case]
  assert r['moved'] > 1e-3, r  # The steps did change the parameters ...
  # ... identically, up to float32 summation order.
  assert r['loss_err'] < 1e-5, r
  assert r['params_err'] < 2e-5, r
  assert r['opt_err'] < 1e-4, r


def test_fsdp_actually_shards_the_parameters():
  results = _child_results()
  # The largest array (the transformer's 128 x 32 MLP kernels): split 4 ways
  # along its 128 axis under FSDP, and so are its Adam moments ...
  fsdp, dp = results['adamw/fsdp'], results['adamw/dp']
  assert fsdp['big_shape'] == [32, 128]
  assert fsdp['big_spec'] == "P(None, 'fsdp')"
  assert fsdp['big_shard'] == [32, 32]
  assert "P(None, 'fsdp')" in fsdp['opt_specs']
  # ... and whole on every device under plain data parallelism.
  assert dp['big_spec'] == 'P()' and dp['big_shard'] == [32, 128]
  assert dp['opt_specs'] == ['P()']
  for name in ('adamp', 'sgdp', 'stable_spam', 'sam_adamw'):  # MLP 64 x 64.
    assert results[f'{name}/fsdp']['big_spec'] == "P('fsdp', None)", name


def test_sharded_hvp_equals_unsharded():
  r = _child_results()['hvp']
  if 'skipped' in r:
    pytest.skip(r['skipped'])
  assert r['norm'] > 0
  assert r['err'] < 1e-5, r


def test_sharded_ntk_equals_unsharded():
  r = _child_results()['ntk']
  if 'skipped' in r:
    pytest.skip(r['skipped'])
  assert r['shape'] == [8, 8]
  assert r['sharded'] == "P('fsdp', None)"
  assert r['err'] < 1e-5, r


if __name__ == '__main__' and sys.argv[1:] == ['--child']:
  _child_main()
