"""Device mesh, shardings and multi-host start: one config, laptop to pod.

The same config runs on one CPU, on a multi-GPU node and on a TPU pod slice;
only the devices change. Everything goes through ``jax.jit`` in/out shardings
(no ``pmap``):

* the mesh has two axes, ``('data', 'fsdp')``, sized by ``config.mesh`` (by
  default every device on ``data``);
* a batch is split along its leading (example) axis over *both* axes, so
  every device computes on ``batch_size / device_count`` examples;
* parameters and optimizer state are replicated, except that with
  ``mesh.fsdp > 1`` every array of at least ``mesh.fsdp_min_size`` elements is
  split over ``fsdp`` along its largest divisible axis (ZeRO-3 style: XLA
  gathers it for the forward/backward pass and reduce-scatters the gradient).

The sharding rule looks only at an array's shape, so an optimizer's moments
(shaped like the parameters) get the parameters' layout and per-tensor
statistics (scalars) are replicated, whatever the optimizer.

Multi-host: ``maybe_initialize_distributed(config)`` calls
``jax.distributed.initialize()`` when ``config.distributed`` or the
environment (SLURM with several tasks, a multi-host TPU slice, or the three
``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``
variables) asks for it; each process then feeds only its slice of every
batch (``global_batch_from_local``).
"""

import dataclasses
import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dynamics import errors
from dynamics.types import Batch, PyTree

AXES = ('data', 'fsdp')
BATCH_AXES = ('data', 'fsdp')  # The example axis is split over every device.
EXPLICIT_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')
SLURM_ENV = ('SLURM_STEP_NODELIST', 'SLURM_PROCID', 'SLURM_LOCALID')


class MeshError(ValueError):
  """The mesh does not fit the devices, or the batch does not fit the mesh."""


class DistributedEnvError(RuntimeError):
  """A multi-process environment is only partly set."""


# ---------------------------------------------------------------------------
# Mesh.


def mesh_shape(mesh_config: ml_collections.ConfigDict,
               device_count: int) -> Tuple[int, int]:
  """``(data, fsdp)`` axis sizes for ``device_count`` devices.

  ``mesh.data = -1`` takes every device the ``fsdp`` axis leaves over.

  Raises:
    MeshError: naming the values, when ``data * fsdp != device_count``.
  """
  data, fsdp = int(mesh_config.data), int(mesh_config.fsdp)
  if fsdp < 1 or (data != -1 and data < 1):
    raise MeshError(f'config.mesh.data={data}, config.mesh.fsdp={fsdp}: data '
                    'must be -1 or >= 1 and fsdp >= 1')
  if data == -1:
    if device_count % fsdp:
      raise MeshError(f'config.mesh.fsdp={fsdp} does not divide the device '
                      f'count ({device_count})')
    data = device_count // fsdp
  if data * fsdp != device_count:
    raise MeshError(f'config.mesh.data={data} x config.mesh.fsdp={fsdp} = '
                    f'{data * fsdp} devices, but there are {device_count} '
                    '(set mesh.data=-1 to use all of them)')
  return data, fsdp


def check(config: ml_collections.ConfigDict, device_count: int) -> None:
  """Raises ``ConfigError`` unless ``config.mesh`` fits ``device_count``
  devices and the global batch splits over it."""
  mesh, batch_size = config.mesh, config.data.batch_size
  errors.integer('mesh.fsdp', mesh.fsdp, 1)
  errors.require(
      mesh.data == -1 or (errors.is_int(mesh.data) and mesh.data >= 1),
      'mesh.data', mesh.data, 'must be -1 (all devices) or >= 1')
  errors.integer('mesh.fsdp_min_size', mesh.fsdp_min_size, 1)
  try:
    data, fsdp = mesh_shape(mesh, device_count)
  except MeshError as e:
    raise errors.ConfigError(str(e)) from None
  errors.require(batch_size % (data * fsdp) == 0, 'data.batch_size',
                 batch_size, f'must be divisible by the device count '
                 f'({device_count}): the batch is split over mesh.data={data} '
                 f'x mesh.fsdp={fsdp} devices')


def make_mesh(mesh_config: ml_collections.ConfigDict,
              devices: Optional[Any] = None) -> Mesh:
  """The ``('data', 'fsdp')`` mesh of ``config.mesh`` over ``devices``.

  Args:
    mesh_config: ``config.mesh`` (``data``, ``fsdp``).
    devices: default ``jax.devices()`` (all processes' devices).

  Returns:
    A ``jax.sharding.Mesh``; on TPU/GPU its device order follows the physical
    topology (``mesh_utils.create_device_mesh``).

  Example:
    >>> mesh = make_mesh(ml_collections.ConfigDict({'data': -1, 'fsdp': 1}))
    >>> mesh.axis_names
    ('data', 'fsdp')
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # Unknown topologies: plain order is always valid.
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, AXES)


def check_batch(batch_size: int, mesh: Mesh) -> None:
  """Raises ``MeshError`` unless ``batch_size`` splits evenly over the mesh."""
  n = mesh.shape['data'] * mesh.shape['fsdp']
  if batch_size % n:
    raise MeshError(
        f'config.data.batch_size={batch_size} is not divisible by the batch '
        f"axes of the mesh (data={mesh.shape['data']} x "
        f"fsdp={mesh.shape['fsdp']} = {n} devices)")


# ---------------------------------------------------------------------------
# Shardings.


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis split over every device; other axes whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def fsdp_spec(shape: Tuple[int, ...], fsdp: int, min_size: int) -> P:
  """``P`` splitting the largest ``fsdp``-divisible axis, or replicated.

  Arrays smaller than ``min_size`` elements stay replicated: gathering them
  costs more latency than their memory is worth.

  Example:
    >>> fsdp_spec((32, 128), fsdp=4, min_size=1024)
    P(None, 'fsdp')
  """
  if fsdp <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  # Largest axis first; ties go to the earlier axis (a stable order).
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp == 0:
      spec = [None] * len(shape)
      spec[axis] = 'fsdp'
      return P(*spec)
  return P()


def tree_shardings(mesh: Mesh, tree: PyTree, min_size: int) -> PyTree:
  """A ``NamedSharding`` per leaf of ``tree`` (FSDP over ``mesh``'s fsdp axis)."""
  fsdp = mesh.shape['fsdp']
  return jax.tree.map(
      lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), fsdp, min_size)),
      tree)


@dataclasses.dataclass(frozen=True)
class TrainShardings:
  """The shardings of one training run.

  Attributes:
    mesh: the device mesh.
    state: a ``NamedSharding`` per leaf of the ``TrainState``.
    batch: the sharding of every batch array (examples over all devices).
    replicated: the sharding of scalars (metrics).
  """
  mesh: Mesh
  state: PyTree
  batch: NamedSharding
  replicated: NamedSharding

  @classmethod
  def create(cls, mesh: Mesh, state: PyTree, fsdp_min_size: int
             ) -> 'TrainShardings':
    return cls(mesh, tree_shardings(mesh, state, fsdp_min_size),
               batch_sharding(mesh), replicated(mesh))

  def put_state(self, state: PyTree) -> PyTree:
    """``state`` (identical on every process) as global sharded arrays."""
    return put_global(state, self.state)

  def put_batch(self, local_batch: Batch) -> Batch:
    """This process's slice of a batch -> global arrays split over the mesh."""
    return global_batch_from_local(local_batch, self.batch)

  def put_full_batch(self, batch: Batch) -> Batch:
    """A batch every process holds whole (eval) -> global arrays.

    Split over the mesh when its size allows, replicated otherwise (a short
    last eval batch).
    """
    n = self.mesh.shape['data'] * self.mesh.shape['fsdp']
    def put(x):
      x = np.asarray(x)
      sharding = (self.batch if x.ndim and x.shape[0] % n == 0
                  else self.replicated)
      return jax.make_array_from_callback(x.shape, sharding,
                                          lambda index: x[index])
    return jax.tree.map(put, batch)


def put_global(tree: PyTree, shardings: PyTree) -> PyTree:
  """Places a host-identical ``tree`` as global arrays with ``shardings``.

  Every process holds the whole value (e.g. the deterministic initial
  state) and contributes the pieces its own devices need, so this works on
  one host and on many; the bits are those of ``tree``.
  """
  def put(x, sharding):
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding,
                                        lambda index: host[index])
  return jax.tree.map(put, tree, shardings)


def global_batch_from_local(local_batch: Batch, sharding: NamedSharding) -> Batch:
  """Assembles the global batch from each process's contiguous slice.

  Process ``i`` of ``n`` holds rows ``[i * B / n, (i + 1) * B / n)`` of the
  global batch of ``B`` examples (what ``data.DataIterator`` yields).
  """
  if jax.process_count() == 1:
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding),
                        local_batch)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def jit_sharded(fn: Callable, shardings: TrainShardings,
                donate_state: bool = True) -> Callable:
  """``fn(state, batch) -> (state, metrics)`` jitted with the run's shardings."""
  return jax.jit(fn,
                 in_shardings=(shardings.state, shardings.batch),
                 out_shardings=(shardings.state, shardings.replicated),
                 donate_argnums=0 if donate_state else ())


# ---------------------------------------------------------------------------
# Multi-host start.


def distributed_request(config: Optional[ml_collections.ConfigDict] = None,
                        environ: Optional[Mapping[str, str]] = None
                        ) -> Optional[Dict[str, Any]]:
  """What ``jax.distributed.initialize`` should be called with, if anything.

  Args:
    config: reads ``config.distributed`` (None: False).
    environ: default ``os.environ``.

  Returns:
    ``None`` for a single-process run, else the keyword arguments for
    ``jax.distributed.initialize`` (``{}``: let JAX detect the cluster).

  Raises:
    DistributedEnvError: an environment only partly set, naming what is
      there and what is missing.
  """
  env = os.environ if environ is None else environ
  explicit = {k: env.get(k) for k in EXPLICIT_ENV}
  if any(v is not None for v in explicit.values()):
    missing = [k for k, v in explicit.items() if v is None]
    if missing:
      given = {k: v for k, v in explicit.items() if v is not None}
      raise DistributedEnvError(
          f'multi-process environment only partly set: {given} but '
          f'{missing} missing; set all of {list(EXPLICIT_ENV)} or none')
    try:
      num, pid = int(explicit['JAX_NUM_PROCESSES']), int(explicit['JAX_PROCESS_ID'])
    except ValueError:
      raise DistributedEnvError(
          f'JAX_NUM_PROCESSES={explicit["JAX_NUM_PROCESSES"]!r} and '
          f'JAX_PROCESS_ID={explicit["JAX_PROCESS_ID"]!r} must be integers'
      ) from None
    if not 0 <= pid < num:
      raise DistributedEnvError(
          f'JAX_PROCESS_ID={pid} must be in [0, JAX_NUM_PROCESSES={num})')
    return dict(coordinator_address=explicit['JAX_COORDINATOR_ADDRESS'],
                num_processes=num, process_id=pid)

  if 'SLURM_JOB_ID' in env and int(env.get('SLURM_NTASKS', '1') or 1) > 1:
    missing = [k for k in SLURM_ENV if k not in env]
    if missing:
      raise DistributedEnvError(
          f'SLURM job {env["SLURM_JOB_ID"]} with SLURM_NTASKS='
          f'{env["SLURM_NTASKS"]} but {missing} not set: start each task '
          'with `srun` (sbatch alone runs one process)')
    return {}

  hosts = env.get('TPU_PROCESS_ADDRESSES') or env.get('TPU_WORKER_HOSTNAMES')
  if hosts and len(hosts.split(',')) > 1:
    if 'TPU_WORKER_ID' not in env:
      raise DistributedEnvError(
          f'multi-host TPU slice ({len(hosts.split(","))} hosts: {hosts}) but '
          'TPU_WORKER_ID is not set: run the same command on every worker '
          '(gcloud ... ssh --worker=all)')
    return {}

  if config is not None and config.distributed:
    return {}
  return None


def maybe_initialize_distributed(config: Optional[ml_collections.ConfigDict]
                                 = None) -> bool:
  """Starts ``jax.distributed`` when config or environment ask; idempotent.

  Must run before anything touches a JAX device (``jax.devices()``,
  ``jax.device_count()``, any computation). Returns True when JAX runs
  distributed after the call.
  """
  if jax.distributed.is_initialized():
    return True
  request = distributed_request(config)
  if request is None:
    return False
  try:
    jax.distributed.initialize(**request)
  except ValueError as e:
    raise DistributedEnvError(
        f'config.distributed={bool(config and config.distributed)} but no '
        f'cluster was detected ({e}); on a machine without SLURM or a TPU '
        f'slice set {list(EXPLICIT_ENV)} in every process') from e
  return True
