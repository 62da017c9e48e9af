"""Tests of analysis/probes.py and dynamics/probes.py: probes built from
explicit arguments or the config, and their series across resumes (state
keyed by the probe's name)."""

import json
import os
import warnings

import jax
import pytest

from analysis import probes
from dynamics import probes as probes_lib
from dynamics.probes import Probe

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


class _InterruptAt(Probe):
  """A probe that stops training when it is called at step ``at``."""
  name, every = 'interrupt_at', 1

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
                if k.startswith(('ntk_', 'sharpness', 'preconditioned',
                                 'hessian_trace'))}
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
  train.train_and_evaluate(config, whole, probes=probes.from_config(config))
  expected = _probe_lines(whole)
  assert sorted(expected) == [0, 2, 4, 6, 8]
  assert expected[6]['ntk_distance_init'] > 0
  assert expected[6]['ntk_velocity'] > 0
  assert 'preconditioned_sharpness' in expected[6]

  # The interrupter comes first: probes are keyed by name, not position.
  with pytest.raises(_Interrupted):
    train.train_and_evaluate(
        config, resumed,
        probes=[_InterruptAt(7)] + probes.from_config(config))
  from dynamics import checkpoint
  assert checkpoint.available_steps(resumed) == [4]
  # Fresh probes, as in a new process: what they know comes from step 4.
  train.train_and_evaluate(config, resumed,
                           probes=probes.from_config(config))
  got = _probe_lines(resumed)
  assert sorted(got) == [0, 2, 4, 6, 8]
  for step in (6, 8):
    assert got[step] == expected[step], step


def _interrupted_then_resumed(config, before, after, workdir):
  """Trains ``config`` with the probes ``before`` until step 7 (checkpoint
  at 4), then resumes with the probes ``after``; the probe lines."""
  from dynamics import train
  with pytest.raises(_Interrupted):
    train.train_and_evaluate(config, workdir,
                             probes=before + [_InterruptAt(7)])
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    train.train_and_evaluate(config, workdir, probes=after)
  return _probe_lines(workdir), [str(w.message) for w in caught]


def test_turning_a_probe_on_at_resume_keeps_the_others_series(tmp_path):
  """The sharpness probe turned on at the resume (placed before the NTK
  probe, as `from_config` does) leaves the NTK series as it was: distance
  from the kernel at initialization, not from the resume (was 0.07 -> 0.0
  when states were keyed by position). The sharpness starts cold."""
  from dynamics import train
  config = tiny_config()
  config.analysis.sharpness_every = None
  ntk_only = probes.from_config(config)
  train.train_and_evaluate(config, str(tmp_path / 'whole'),
                           probes=probes.from_config(config))
  expected = _probe_lines(str(tmp_path / 'whole'))
  assert expected[6]['ntk_distance_init'] > 0
  both = config.copy_and_resolve_references()
  both.analysis.sharpness_every = 2
  got, _ = _interrupted_then_resumed(config, ntk_only,
                                     probes.from_config(both),
                                     str(tmp_path / 'resumed'))
  for step in (6, 8):
    ntk = {k: v for k, v in got[step].items() if k.startswith('ntk_')}
    assert ntk == expected[step], step
    assert got[step]['sharpness'] > 0
  assert 'sharpness' not in got[4]


def test_a_probe_without_its_initial_state_says_its_series_restarted(
    tmp_path):
  """The NTK probe turned on at a resume has no kernel at initialization: it
  warns, and logs ntk_distance_restart from the resume's first call (with
  ntk_restarted_at), never an ntk_distance_init."""
  config = tiny_config()
  config.analysis.sharpness_every = None
  got, messages = _interrupted_then_resumed(
      config, [], probes.from_config(config), str(tmp_path))
  assert sorted(got) == [6, 8]
  assert got[6]['ntk_distance_restart'] == 0.0
  assert got[8]['ntk_distance_restart'] > 0
  assert got[6]['ntk_restarted_at'] == got[8]['ntk_restarted_at'] == 6
  assert not any('ntk_distance_init' in got[s] for s in got)
  assert any('no kernel at initialization (first called at step 6' in m
             for m in messages), messages


def test_probe_names_are_unique_and_legacy_states_still_load():
  """Two probes with one name are refused before training; a checkpoint
  keyed by position ('<i>_<Class>', before names) gives each probe the state
  of its class when the class appears once."""
  from dynamics import train
  with pytest.raises(ValueError, match="two probes are named 'ntk'"):
    train.train_and_evaluate(tiny_config(), '/nonexistent/never/created',
                             probes=[probes.NTKProbe(2), probes.NTKProbe(3)])
  with pytest.raises(ValueError, match="'x': every must be a positive"):
    probes_lib.check([type('P', (Probe,), {'name': 'x', 'every': 0})()])
  sharpness, ntk = probes.SharpnessProbe(2), probes.NTKProbe(2)
  saved = {'0_NTKProbe': {'init': [[1.0]], 'prev_step': 4, 'prev': [[2.0]]},
           '1_SharpnessProbe': {'hessian': [1.0, 0.0]}}
  probes_lib.restore([sharpness, ntk], saved)
  assert ntk.state_dict()['prev_step'] == 4
  assert ntk.state_dict()['init_step'] == 0
  assert list(sharpness.state_dict()) == ['hessian']
  assert probes_lib.states([sharpness, ntk]).keys() == {'sharpness', 'ntk'}


def test_from_config_names_the_field_a_probe_refuses():
  from dynamics import config_lib
  for field, value, message in [
      ('sharpness_batches', 0, 'sharpness_batches=0: must be an integer > 0'),
      ('sharpness_data', 'foo', "sharpness_data='foo': must be one of"),
      ('ntk_num_examples', 0, 'ntk_num_examples=0: must be an integer > 0')]:
    config = tiny_config()
    config.analysis[field] = value
    with pytest.raises(config_lib.ConfigError, match=message):
      probes.from_config(config)
