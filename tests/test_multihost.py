"""Two processes x two CPU devices (loopback) train like one 4-device process.

Each worker is this file run as a script: it sets up its devices through the
environment (``XLA_FLAGS``, ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``), runs ``train_and_evaluate`` on the smoke config with
``config.distributed=True`` and an FSDP mesh (2 x 2) into one shared workdir,
gathers the final parameters and prints them with what it saw (process
index, devices, the shape of its own slice of each batch) as JSON. Cross-
process collectives on CPU go through gloo (JAX's default CPU collectives).

The second test sends SIGTERM to process 1 only, mid-run: JAX's preemption
service makes both processes checkpoint at the same step and stop; the re-run
resumes and ends where the uninterrupted run ends.

The last test runs the workers on token files (``--tokens-worker``): each
process reads only its own rows of a global batch, and
``jax.make_array_from_process_local_data`` assembles the batch a single
process reads.
"""

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile

import jax

jax.config.update('jax_numpy_rank_promotion', 'raise')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from dynamics.probes import Probe  # noqa: E402  pylint: disable=g-import-not-at-top

NUM_STEPS = 6
TIMEOUT = 420


@functools.lru_cache(maxsize=None)
def small_config():
  from configs import wsd
  c = wsd.get_config('smoke')
  c.num_steps = NUM_STEPS
  c.log_every = 1
  c.eval_every = NUM_STEPS
  c.eval_batches = 1
  c.model.num_layers = 1
  c.schedule.warmup_steps = 2
  c.optimizer.adamw.eps = 1e-6  # See tests/test_sharding.py: zero-gradient noise.
  c.checkpoint.every_steps = 3
  c.mesh.fsdp = 2
  c.mesh.fsdp_min_size = 256
  c.distributed = True
  return c


class _KillSelf(Probe):
  """A probe: process ``pid`` sends itself SIGTERM after step ``at``."""
  name = 'kill_self'

  def __init__(self, at: int, pid: int):
    self.every, self.at, self.pid = 1, at, pid

  def __call__(self, state, ctx):
    import jax
    if int(state.step) == self.at and jax.process_index() == self.pid:
      os.kill(os.getpid(), signal.SIGTERM)
    return {}


def _worker(workdir: str, sigterm_at: int) -> None:
  import jax
  import numpy as np
  from jax.experimental import multihost_utils
  from dynamics import data as data_lib
  from dynamics import train

  config = small_config()
  # The single-process reference run has no coordinator to join.
  config.distributed = 'JAX_NUM_PROCESSES' in os.environ
  probes = [_KillSelf(sigterm_at, pid=1)] if sigterm_at else []
  out = {}
  try:
    state = train.train_and_evaluate(config, workdir, probes=probes)
  except train.Preempted as e:
    out['preempted'] = str(e)
    state = None
  out.update(process_index=jax.process_index(),
             process_count=jax.process_count(),
             local_devices=jax.local_device_count(),
             devices=jax.device_count())
  it = data_lib.DataIterator(data_lib.get_dataset(config),
                             process_index=jax.process_index(),
                             process_count=jax.process_count())
  local = next(it)
  out['local_batch_shape'] = list(local['inputs'].shape)
  out['local_batch_first_row'] = local['inputs'][0][:4].tolist()
  if state is not None:
    params = multihost_utils.process_allgather(state.params, tiled=True)
    out['params'] = [np.asarray(x).ravel()[:64].tolist()
                     for x in jax.tree.leaves(params)]
    out['step'] = int(state.step)
  print('RESULT ' + json.dumps(out), flush=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _tokens_worker(token_dir: str) -> None:
  """Reads this process's rows of batch 3 of ``token_dir`` and assembles the
  global batch on the 2 x 2 mesh."""
  import jax
  from jax.experimental import multihost_utils
  from dynamics import data as data_lib
  from dynamics import sharding

  config = small_config()
  config.data.name, config.data.path = 'tokens', token_dir
  sharding.maybe_initialize_distributed(config)
  dataset = data_lib.get_dataset(config)
  local = next(data_lib.DataIterator(dataset, 3, jax.process_index(),
                                     jax.process_count()))
  mesh = sharding.make_mesh(config.mesh)
  batch = sharding.global_batch_from_local(local,
                                           sharding.batch_sharding(mesh))
  assembled = multihost_utils.process_allgather(batch['inputs'], tiled=True)
  print('RESULT ' + json.dumps({
      'process_index': jax.process_index(),
      'windows': dataset.read_windows.tolist(),
      'local_inputs': local['inputs'].tolist(),
      'global_shape': list(batch['inputs'].shape),
      'assembled': assembled.tolist()}), flush=True)


def _launch(workdir, num_processes, devices_per_process, sigterm_at=0,
            mode='--worker'):
  """Starts the workers; returns their Popen objects."""
  port = _free_port()
  procs = []
  for pid in range(num_processes):
    env = dict(os.environ, JAX_PLATFORMS='cpu',
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               XLA_FLAGS=os.environ.get('XLA_FLAGS', '') +
               f' --xla_force_host_platform_device_count={devices_per_process}')
    if num_processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
                 JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), mode, workdir,
         str(sigterm_at)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  return procs


def _collect(procs):
  results = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    lines = [l for l in out.splitlines() if l.startswith('RESULT ')]
    assert p.returncode == 0 and lines, out[-4000:]
    results.append(json.loads(lines[-1][len('RESULT '):]))
  return results


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f]


def _max_diff(a, b):
  import numpy as np
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(a, b))


@functools.lru_cache(maxsize=None)
def _runs():
  """The 2-process run and the 1-process 4-device run, side by side."""
  tmp = tempfile.mkdtemp(prefix='multihost_')
  multi_dir, single_dir = os.path.join(tmp, 'multi'), os.path.join(tmp, 'single')
  procs = _launch(multi_dir, 2, 2) + _launch(single_dir, 1, 4)
  results = _collect(procs)
  return multi_dir, single_dir, results[:2], results[2]


def test_two_processes_see_a_four_device_mesh_and_their_own_data():
  _, _, multi, single = _runs()
  assert [r['process_index'] for r in multi] == [0, 1]
  for r in multi:
    assert (r['process_count'], r['local_devices'], r['devices']) == (2, 2, 4)
    assert r['local_batch_shape'] == [4, 16]  # Half of the global batch of 8.
  assert single['local_batch_shape'] == [8, 16]
  # Process 1 reads the second half of the batch the single process reads.
  assert multi[0]['local_batch_first_row'] != multi[1]['local_batch_first_row']


def test_two_processes_train_like_one_four_device_process():
  multi_dir, single_dir, multi, single = _runs()
  # Both processes hold the same (gathered) parameters ...
  assert multi[0]['params'] == multi[1]['params']
  # ... equal to the single-process run's up to float32 summation order.
  assert _max_diff(multi[0]['params'], single['params']) < 1e-5
  m_multi, m_single = _metrics(multi_dir), _metrics(single_dir)
  # Only process 0 wrote metrics: one line per step (+ step 0), no duplicates.
  assert [m['step'] for m in m_multi] == list(range(NUM_STEPS + 1))
  assert [m['step'] for m in m_single] == list(range(NUM_STEPS + 1))
  for a, b in zip(m_multi[1:], m_single[1:]):
    assert abs(a['train_loss'] - b['train_loss']) < 1e-5, (a, b)
  assert abs(m_multi[-1]['eval_loss'] - m_single[-1]['eval_loss']) < 1e-5
  # The orbax checkpoints were written collectively into the shared workdir.
  from dynamics import checkpoint
  assert checkpoint.available_steps(multi_dir) == [3, 6]


def test_sigterm_to_one_process_checkpoints_both_and_resume_matches():
  multi_dir, _, multi, _ = _runs()
  workdir = tempfile.mkdtemp(prefix='multihost_preempt_')
  first = _collect(_launch(workdir, 2, 2, sigterm_at=2))
  assert all('preempted' in r for r in first), first
  # Both stopped at the same step, which both checkpointed.
  from dynamics import checkpoint
  stopped = checkpoint.available_steps(workdir)[-1]
  assert 2 < stopped < NUM_STEPS, stopped
  assert f'saved step {stopped}' in first[0]['preempted']
  assert f'saved step {stopped}' in first[1]['preempted']
  second = _collect(_launch(workdir, 2, 2))
  assert [r['step'] for r in second] == [NUM_STEPS, NUM_STEPS]
  assert _max_diff(second[0]['params'], multi[0]['params']) < 1e-6
  losses = {m['step']: m['train_loss'] for m in _metrics(workdir)
            if 'train_loss' in m}
  ref = {m['step']: m['train_loss'] for m in _metrics(multi_dir)
         if 'train_loss' in m}
  assert sorted(losses) == sorted(ref)
  assert max(abs(losses[s] - ref[s]) for s in ref) < 1e-6


def test_each_process_reads_its_own_rows_of_token_files(tmp_path):
  import numpy as np
  from dynamics import data as data_lib
  from experiments import prepare_text
  token_dir = str(tmp_path / 'tokens')
  prepare_text.prepare(prepare_text.input_files(
      os.path.join(data_lib.default_text_dir(), 'json')), token_dir, 'bytes',
                       eval_tokens=2000, progress=False)
  workers = _collect(_launch(token_dir, 2, 2, mode='--tokens-worker'))
  config = small_config()
  single = data_lib.TokenFiles(token_dir, config.data.seq_len,
                               config.data.batch_size, config.seed)
  expected = single.train_batch(3)['inputs']
  assert [w['process_index'] for w in workers] == [0, 1]
  # Disjoint rows (windows) that together are the single-process batch's.
  first, second = (set(w['windows']) for w in workers)
  assert len(first) == len(second) == 4 and not first & second
  assert workers[0]['windows'] + workers[1]['windows'] == \
      single.read_windows.tolist()
  np.testing.assert_array_equal(
      np.concatenate([w['local_inputs'] for w in workers]), expected)
  for w in workers:  # The assembled global array, seen from each process.
    assert w['global_shape'] == [8, 16]
    np.testing.assert_array_equal(w['assembled'], expected)


if __name__ == '__main__' and sys.argv[1:2] == ['--worker']:
  _worker(sys.argv[2], int(sys.argv[3]))
if __name__ == '__main__' and sys.argv[1:2] == ['--tokens-worker']:
  _tokens_worker(sys.argv[2])
