"""Tests of analysis/probes.py: the probe protocol, and probes across a resume."""

import json
import os

import jax
import pytest

from analysis import probes

jax.config.update('jax_numpy_rank_promotion', 'raise')


def tiny_config():
  """An 8-step MLP on digits with both probes every 2 steps, checkpoints
  every 4 (synchronous)."""
  from configs import base
  c = base.get_config()
  c.num_steps, c.log_every, c.eval_every, c.progress = 8, 2, 4, False
  c.model.name, c.model.hidden_sizes = 'mlp', (8,)
  c.data.name, c.data.batch_size = 'digits', 16
  c.optimizer.name, c.optimizer.learning_rate = 'adamw', 0.01
  c.schedule.name, c.schedule.warmup_steps = 'constant', 0
  c.checkpoint.every_steps, c.checkpoint.async_save = 4, False
  c.analysis.ntk_every, c.analysis.ntk_num_examples = 2, 20
  c.analysis.sharpness_every, c.analysis.sharpness_iters = 2, 20
  return c


class _Interrupted(Exception):
  pass


class _InterruptAt:
  """A probe that stops training when it is called at step ``at``."""
  every = 1

  def __init__(self, at):
    self.at = at

  def __call__(self, state, run):
    del run
    if int(state.step) == self.at:
      raise _Interrupted(f'interrupted at step {self.at}')
    return {}


def _probe_lines(workdir):
  """``{step: {probe metric: value}}`` of ``workdir/metrics.jsonl``."""
  out = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      values = {k: v for k, v in record.items()
                if k.startswith(('ntk_', 'sharpness', 'preconditioned'))}
      if values:
        assert record['step'] not in out, f'step {record["step"]} logged twice'
        out[record['step']] = values
  return out


def test_from_config_builds_the_enabled_probes():
  from configs import base
  assert probes.from_config(base.get_config()) == []
  config = tiny_config()
  config.analysis.trace_every = 3
  sharpness, ntk = probes.from_config(config)
  assert isinstance(sharpness, probes.SharpnessProbe)
  assert isinstance(ntk, probes.NTKProbe)
  assert (sharpness.every, ntk.every) == (1, 2)   # gcd(2, 3); ntk_every.
  # Nothing to checkpoint before the first call.
  assert sharpness.state_dict() == {} and ntk.state_dict() == {}


def test_resumed_run_continues_the_probe_series(tmp_path):
  """Interrupted at step 7 and resumed from the checkpoint at step 4, a run
  logs the same probe values as an uninterrupted one: the NTK distance from
  the kernel at initialization, the NTK velocity from the kernel at step 4,
  and the sharpness warm-started from step 4's eigenvectors."""
  from dynamics import train
  config = tiny_config()
  whole, resumed = str(tmp_path / 'whole'), str(tmp_path / 'resumed')
  train.train_and_evaluate(config, whole, callbacks=probes.from_config(config))
  expected = _probe_lines(whole)
  assert sorted(expected) == [0, 2, 4, 6, 8]
  assert expected[6]['ntk_distance_init'] > 0
  assert expected[6]['ntk_velocity'] > 0
  assert 'preconditioned_sharpness' in expected[6]

  # The interrupter comes last, so the probes keep their checkpoint keys.
  with pytest.raises(_Interrupted):
    train.train_and_evaluate(
        config, resumed,
        callbacks=probes.from_config(config) + [_InterruptAt(7)])
  from dynamics import checkpoint
  assert checkpoint.available_steps(resumed) == [4]
  # Fresh probes, as in a new process: what they know comes from step 4.
  train.train_and_evaluate(config, resumed,
                           callbacks=probes.from_config(config))
  got = _probe_lines(resumed)
  assert sorted(got) == [0, 2, 4, 6, 8]
  for step in (6, 8):
    assert got[step] == expected[step], step
