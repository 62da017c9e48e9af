"""WSD branching, parameter EMA and WSM merging, through the core.

One small constant-rate parent run (checkpoints every 8 steps for merging)
serves the branching, EMA and merge tests.
"""

import os

import jax
import numpy as np
import optax
import pytest

from configs import wsd as wsd_config
from dynamics import checkpoint, config_lib, merging, metrics, runs as runs_lib
from dynamics import train
from dynamics.runs import Run, RunNotFoundError
from experiments import merge

jax.config.update('jax_numpy_rank_promotion', 'raise')

PARENT_STEPS, BRANCH_STEP, DECAY = 24, 16, 8
EMA_DECAY = 0.75


def _config(**changes):
  c = wsd_config.get_config('smoke')
  c.num_steps = PARENT_STEPS
  c.log_every = 1
  c.eval_every = 4
  c.checkpoint.every_steps = 8
  c.checkpoint.async_save = False
  c.checkpoint.keep_steps = (10, 11)  # Consecutive, to check the EMA update.
  c.ema.decay = EMA_DECAY  # Every run keeps an EMA; a branch continues it.
  c.update_from_flattened_dict(changes)
  return c


def _lines(workdir):
  return {r['step']: r for r in Run.open(workdir).metrics()}


def _same_line(a, b, keys=('train_loss', 'learning_rate', 'grad_norm',
                           'param_norm', 'eval_loss')):
  return all(a.get(k) == b.get(k) for k in keys)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('branching')
  parent = str(root / 'parent')
  train.train_and_evaluate(
      _config(**{'schedule.name': 'constant', 'merge.interval': 8}), parent)
  branch = str(root / f'branch{BRANCH_STEP}')
  final = train.train_and_evaluate(
      _config(**{'branch.from_workdir': parent, 'branch.from_step': BRANCH_STEP,
                 'branch.decay_steps': DECAY, 'schedule.decay_shape': 'cosine'}),
      branch)
  # An uninterrupted WSD run with the same schedule: stable until the branch
  # step, then the same cosine decay.
  reference = str(root / 'reference')
  ref_final = train.train_and_evaluate(
      _config(**{'num_steps': BRANCH_STEP + DECAY,
                 'schedule.decay_fraction': DECAY / (BRANCH_STEP + DECAY),
                 'schedule.decay_shape': 'cosine'}), reference)
  return dict(parent=parent, branch=branch, reference=reference, final=final,
              ref_final=ref_final)


def test_branch_continues_the_parent_bit_for_bit(runs):
  parent, branch, ref = (_lines(runs[k]) for k in
                         ('parent', 'branch', 'reference'))
  # Up to the branch step the parent is the uninterrupted run, bit for bit.
  for s in range(1, BRANCH_STEP + 1):
    assert _same_line(parent[s], ref[s]), s
  # The branch starts after the branch step and then matches it exactly too.
  assert min(branch) == BRANCH_STEP + 1 and max(branch) == BRANCH_STEP + DECAY
  for s in range(BRANCH_STEP + 1, BRANCH_STEP + DECAY + 1):
    assert _same_line(branch[s], ref[s]), (s, branch[s], ref[s])
  # The decay is real: stable rate until the branch step, then cosine to 0.
  peak = parent[BRANCH_STEP]['learning_rate']
  assert branch[BRANCH_STEP + 1]['learning_rate'] == peak
  assert 0 < branch[BRANCH_STEP + DECAY]['learning_rate'] < 0.05 * peak
  for a, b in zip(jax.tree.leaves(runs['final'].params),
                  jax.tree.leaves(runs['ref_final'].params)):
    np.testing.assert_array_equal(a, b)
  assert int(runs['final'].step) == BRANCH_STEP + DECAY


def test_branch_records_parent_and_continues_optimizer_and_data(runs):
  recorded = Run.open(runs['branch']).record
  assert recorded['parent'] == {'workdir': os.path.abspath(runs['parent']),
                                'step': BRANCH_STEP}
  assert recorded['num_steps'] == BRANCH_STEP + DECAY
  parent_state = Run.open(runs['parent']).state(BRANCH_STEP)
  branch_state = Run.open(runs['branch']).state()
  # Adam's count continued from the parent (not restarted at 0).
  counts = [int(x) for x in jax.tree.leaves(branch_state.opt_state)
            if np.ndim(x) == 0 and np.issubdtype(np.asarray(x).dtype,
                                                 np.integer)]
  assert counts and all(c == BRANCH_STEP + DECAY for c in counts)
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(parent_state.params), jax.tree.leaves(branch_state.params)))
  data = checkpoint.Checkpointer(runs['branch'], async_save=False)
  try:
    data_state = data.restore(BRANCH_STEP + DECAY, branch_state).data
  finally:
    data.close()
  assert data_state == {'position': BRANCH_STEP + DECAY}


def test_branch_from_a_step_without_checkpoint_names_it(runs, tmp_path):
  config = _config(**{'branch.from_workdir': runs['parent'],
                      'branch.from_step': 14, 'branch.decay_steps': DECAY})
  with pytest.raises(config_lib.ConfigError,
                     match=r'from_step=14: no checkpoint.*'
                     r'available steps: \[8, 10, 11, 16, 24\]'):
    train.train_and_evaluate(config, str(tmp_path / 'bad'))


def test_branch_from_a_directory_without_a_run_names_it(tmp_path):
  config = _config(**{'branch.from_workdir': str(tmp_path / 'nothing'),
                      'branch.from_step': 8, 'branch.decay_steps': DECAY})
  with pytest.raises(config_lib.ConfigError,
                     match=r'^config.branch.from_workdir=.*nothing: .*holds no '
                     r'run \(config.json is missing\)$'):
    train.train_and_evaluate(config, str(tmp_path / 'bad'))


def test_ema_follows_incremental_update_and_is_evaluated(runs):
  workdir = runs['parent']
  run = Run.open(workdir)
  s10, s11 = run.state(10), run.state(11)
  expected = optax.incremental_update(s11.params, s10.ema_params,
                                      1.0 - EMA_DECAY)
  for got, want, raw in zip(jax.tree.leaves(s11.ema_params),
                            jax.tree.leaves(expected),
                            jax.tree.leaves(s11.params)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(got, raw)  # The average lags the raw weights.
  lines = _lines(workdir)
  for s in range(0, PARENT_STEPS + 1, 4):
    assert 'eval_loss_ema' in lines[s] and 'eval_loss' in lines[s], s
  assert lines[0]['eval_loss_ema'] == lines[0]['eval_loss']  # EMA starts at init.
  assert lines[PARENT_STEPS]['eval_loss_ema'] != lines[PARENT_STEPS]['eval_loss']
  # The branch continued the parent's EMA: the same as the uninterrupted run.
  for a, b in zip(jax.tree.leaves(runs['final'].ema_params),
                  jax.tree.leaves(runs['ref_final'].ema_params)):
    np.testing.assert_array_equal(a, b)


def test_merge_checkpoints_and_the_merge_command(runs, tmp_path, monkeypatch):
  parent = runs['parent']
  steps = merging.window_steps(PARENT_STEPS, 24, 8)
  assert steps == [8, 16, 24]
  weights = merging.merge_weights('cosine', 3)
  run = Run.open(parent)
  merged = merging.merge_checkpoints(run, steps, weights)
  loaded = [run.state(s).params for s in steps]
  expected = jax.tree.map(
      lambda *xs: sum(float(c) * np.asarray(x) for c, x in zip(weights, xs)),
      *loaded)
  for got, want in zip(jax.tree.leaves(merged), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  with pytest.raises(RunNotFoundError, match=r'no checkpoint at step 18 in .*'
                     r'available steps: \[8, 10, 11, 16, 24\]'):
    merging.merge_checkpoints(run, [18, 24], [0.5, 0.5])
  with pytest.raises(ValueError, match='sum to 1.*0.9'):
    merging.merge_checkpoints(run, [16, 24], [0.5, 0.4])

  out = str(tmp_path / 'merged')
  written = []
  write = metrics.MetricWriter.write
  monkeypatch.setattr(metrics.MetricWriter, 'write', lambda self, step, m: (
      written.append((self.path, step)), write(self, step, m)))
  record = merge.merge_and_evaluate(parent, window=24, shape='cosine',
                                    output=out)
  # The output is a run of its own: recorded by Run.create with the source
  # checkpoint as its parent, its metrics written by the MetricWriter.
  merged_run = Run.open(out)
  assert merged_run.parent == {'workdir': os.path.abspath(parent),
                               'step': PARENT_STEPS}
  assert merged_run.config.to_dict() == Run.open(parent).config.to_dict()
  assert written == [(merged_run.metrics_path, PARENT_STEPS)]
  assert [m['step'] for m in merged_run.metrics()] == [PARENT_STEPS]
  assert runs_lib.merge_source(out) == os.path.abspath(parent)
  assert record['steps'] == steps and record['step'] == PARENT_STEPS
  np.testing.assert_allclose(record['weights'], weights, rtol=1e-15)
  saved = Run.open(out).state(PARENT_STEPS)
  for got, want in zip(jax.tree.leaves(saved.params), jax.tree.leaves(merged)):
    np.testing.assert_array_equal(got, want)
  # The raw loss is the parent's own final eval; the merge is evaluated too.
  assert record['eval_loss_raw'] == pytest.approx(
      _lines(parent)[PARENT_STEPS]['eval_loss'], rel=1e-6)
  assert _lines(out)[PARENT_STEPS]['eval_loss'] == record['eval_loss']
  assert np.isfinite(record['eval_loss'])
  assert record['eval_loss'] != record['eval_loss_raw']
  with pytest.raises(FileExistsError, match='already exists'):
    merge.merge_and_evaluate(parent, window=24, shape='cosine', output=out)
  with pytest.raises(ValueError, match='window=32 is longer than the run'):
    merge.merge_and_evaluate(parent, window=32, shape='linear',
                             output=str(tmp_path / 'm2'))
