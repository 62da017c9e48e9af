"""Issue 28 item 5: a run saved on 2 devices reads whole on 1.

``Run.state()`` and ``experiments.merge`` restored with the saved topology
("Topology mismatch"); now every leaf is placed on today's devices. The run
is trained once (module fixture) in a child with two CPU devices
(``--xla_force_host_platform_device_count=2``); this process has one.
Reading a healthy checkpoint prints no absl warning about a missing
metadata file (it read as corruption).
"""

import logging
import os
import subprocess
import sys

import jax

jax.config.update('jax_numpy_rank_promotion', 'raise')

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dynamics import runs  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = """
import sys
import jax
from configs import wsd
from dynamics import train
assert jax.device_count() == 2, jax.devices()
c = wsd.get_config('smoke')
c.num_steps, c.eval_every, c.eval_batches, c.log_every = 4, 4, 1, 2
c.schedule.warmup_steps = 1
c.checkpoint.every_steps, c.checkpoint.async_save = 2, False
c.model.num_layers, c.model.d_model, c.progress = 1, 16, False
c.merge.interval, c.merge.window = 2, 4
train.train_and_evaluate(c, sys.argv[1])
"""


@pytest.fixture(scope='module')
def two_device_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('devices') / 'run')
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, XLA_FLAGS=(
      os.environ.get('XLA_FLAGS', '') +
      ' --xla_force_host_platform_device_count=2').strip())
  out = subprocess.run([sys.executable, '-c', CHILD, workdir], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


def test_the_whole_state_reads_on_another_device_count(two_device_run, caplog):
  assert jax.device_count() == 1
  run = runs.Run.open(two_device_run)
  with caplog.at_level(logging.WARNING):
    state = run.state()
    params = run.params(4)
  assert int(state.step) == 4
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not [r for r in caplog.records if 'Metadata file' in r.getMessage()]


def test_a_merge_reads_a_run_of_another_device_count(two_device_run):
  from experiments import merge
  record = merge.merge_and_evaluate(two_device_run)
  assert record['steps'] == [2, 4] and np.isfinite(record['eval_loss'])
