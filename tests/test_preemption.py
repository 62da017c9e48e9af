"""SIGTERM (the preemption notice of TPU VMs and SLURM) mid-run, then resume.

The run sends itself a real SIGTERM from a callback after step 3: the loop
checkpoints at the next step boundary (step 4), raises ``Preempted`` with a
message saying how to resume, and restores the previous signal handler.
Re-running the same call resumes from step 4 and ends bit-for-bit where an
uninterrupted run ends. The multi-process version (SIGTERM to one of two
processes, both checkpoint at the same step) is in tests/test_multihost.py.
"""

import json
import os
import signal

import jax

jax.config.update('jax_numpy_rank_promotion', 'raise')

import chex  # noqa: E402
import pytest  # noqa: E402

from configs import wsd  # noqa: E402
from dynamics import checkpoint as checkpoint_lib  # noqa: E402
from dynamics.probes import Probe  # noqa: E402
from dynamics import throughput  # noqa: E402
from dynamics import train  # noqa: E402

NUM_STEPS = 8
SIGTERM_AFTER = 3


def small_config(log_stall=False):
  c = wsd.get_config('smoke')
  c.checkpoint.log_stall = log_stall
  c.num_steps = NUM_STEPS
  c.log_every = 1
  c.eval_every = NUM_STEPS
  c.eval_batches = 1
  c.model.num_layers = 1
  c.schedule.warmup_steps = 2
  c.checkpoint.every_steps = 5
  return c


class SigtermAt(Probe):
  """A probe sending this process a real SIGTERM after step ``at``."""
  name = 'sigterm_at'

  def __init__(self, at: int):
    self.every, self.at = 1, at

  def __call__(self, state, ctx):
    if int(state.step) == self.at:
      os.kill(os.getpid(), signal.SIGTERM)
    return {}


def _metrics(workdir):
  """metrics.jsonl without the wall-clock throughput (not bitwise)."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(l).items()
             if k not in throughput.KEYS} for l in f]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('preemption'))
  ref_dir = os.path.join(root, 'uninterrupted')
  ref_state = jax.device_get(train.train_and_evaluate(
      small_config(log_stall=True), ref_dir))
  workdir = os.path.join(root, 'preempted')
  handler_before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(train.Preempted) as info:
    train.train_and_evaluate(small_config(), workdir,
                             probes=[SigtermAt(SIGTERM_AFTER)])
  preempted = dict(message=str(info.value),
                   steps=checkpoint_lib.available_steps(workdir),
                   handler_restored=signal.getsignal(signal.SIGTERM)
                   is handler_before)
  resumed = jax.device_get(train.train_and_evaluate(small_config(), workdir))
  return dict(ref_dir=ref_dir, ref=ref_state, workdir=workdir,
              preempted=preempted, resumed=resumed)


def test_sigterm_checkpoints_at_the_next_step_and_stops(runs):
  p = runs['preempted']
  stop = SIGTERM_AFTER + 1
  assert p['steps'] == [stop]  # Saved at the boundary; nothing after it.
  assert p['message'] == (f'SIGTERM: saved step {stop} in {runs["workdir"]}; '
                          're-run the same command to resume.')
  assert p['handler_restored']


def test_resume_after_sigterm_equals_uninterrupted_run(runs):
  ref, resumed = runs['ref'], runs['resumed']
  assert int(resumed.step) == NUM_STEPS
  chex.assert_trees_all_equal(ref, resumed)  # Bit-for-bit.
  assert _metrics(runs['workdir']) == _metrics(runs['ref_dir'])


def test_checkpoint_stall_is_recorded_per_save_only_when_asked(runs):
  assert not os.path.exists(os.path.join(runs['workdir'],
                                         'checkpoint_stall.jsonl'))
  with open(os.path.join(runs['ref_dir'], 'checkpoint_stall.jsonl')) as f:
    records = [json.loads(l) for l in f]
  assert [r['step'] for r in records] == [5, NUM_STEPS]
  assert all(r['async'] and 0 <= r['stall_s'] < 60 for r in records)
