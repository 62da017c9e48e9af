"""Tests of experiments/sweep.py: expansion, local runs that skip finished
points, the summary table and plot, and the emitted SLURM / TPU job scripts."""

import csv
import os
import subprocess
import sys

import jax

jax.config.update('jax_numpy_rank_promotion', 'raise')

import pytest  # noqa: E402

from configs import wsd  # noqa: E402
from experiments import sweep  # noqa: E402

CONFIG_ARG = 'configs/wsd.py:smoke'
# Tiny runs: the sweep launches real `python -m experiments.main` processes.
OVERRIDES = ['--config.num_steps=3', '--config.eval_every=3',
             '--config.eval_batches=1', '--config.log_every=1',
             '--config.model.num_layers=1', '--config.schedule.warmup_steps=1',
             '--config.checkpoint.every_steps=3']


def test_plan_expands_the_product_in_command_line_order(tmp_path):
  points = sweep.plan(wsd.get_config('smoke'), CONFIG_ARG, ['--config.num_steps=7'],
                      ['optimizer.learning_rate=1e-3,3e-3,1e-2', 'seed=0,1'],
                      str(tmp_path))
  assert [p.name for p in points] == [
      f'optimizer.learning_rate={lr},seed={s}'
      for lr in ('1e-3', '3e-3', '1e-2') for s in ('0', '1')]
  p = points[3]
  assert p.values == {'optimizer.learning_rate': '3e-3', 'seed': '1'}
  assert p.workdir == os.path.join(str(tmp_path), p.name)
  assert p.args == ['-m', 'experiments.main', f'--config={CONFIG_ARG}',
                    '--config.num_steps=7',
                    '--config.optimizer.learning_rate=3e-3', '--config.seed=1',
                    f'--workdir={p.workdir}']
  assert len({p.workdir for p in points}) == 6  # Each point its own workdir.


def test_plan_without_sweeps_is_one_point(tmp_path):
  points = sweep.plan(wsd.get_config(), 'configs/wsd.py', [], [], str(tmp_path))
  assert [p.name for p in points] == ['default']


@pytest.mark.parametrize('spec, message', [
    ('seed', r"--sweep='seed': expected FIELD=V1,V2"),
    ('seed=1,,2', r'expected FIELD=V1,V2'),
    ('optimizer.learnin_rate=1e-3', r'optimizer.learnin_rate: unknown field'),
    ('nope.seed=1', r'nope.seed: unknown field'),
    ('seed=zero', r"seed='zero': not a valid int \(current value 0\)"),
    ('optimizer.learning_rate=fast', r"not a valid float"),
    ('progress=maybe', r"progress='maybe': not a valid bool"),
])
def test_plan_rejects_bad_sweeps_naming_them(tmp_path, spec, message):
  with pytest.raises(sweep.SweepError, match=message):
    sweep.plan(wsd.get_config('smoke'), CONFIG_ARG, [], [spec], str(tmp_path))


def test_plan_rejects_a_field_swept_twice(tmp_path):
  with pytest.raises(sweep.SweepError, match='names a field twice'):
    sweep.plan(wsd.get_config('smoke'), CONFIG_ARG, [], ['seed=0', 'seed=1'],
               str(tmp_path))


def _mtimes(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return {n: os.path.getmtime(os.path.join(d, n)) for n in os.listdir(d)}


def test_local_sweep_skips_finished_points_and_summarizes(tmp_path):
  root = str(tmp_path / 'sweep')
  config = wsd.get_config('smoke')
  first = sweep.plan(config, CONFIG_ARG, OVERRIDES, ['seed=0'], root)
  assert sweep.run_local(first, log=lambda _: None) == ['seed=0']
  assert sweep.is_finished(first[0].workdir)
  before = _mtimes(first[0].workdir)
  # A wider sweep runs only the new point (two at a time allowed) ...
  points = sweep.plan(config, CONFIG_ARG, OVERRIDES, ['seed=0,1'], root)
  logged = []
  assert sweep.run_local(points, parallel=2, log=logged.append) == ['seed=1']
  assert '[sweep] seed=0: finished, skipped' in logged
  assert _mtimes(first[0].workdir) == before  # seed=0 was not touched.
  # ... and a re-run runs nothing.
  assert sweep.run_local(points, log=lambda _: None) == []

  csv_path, png_path = sweep.write_summary(points, root)
  with open(csv_path) as f:
    rows = list(csv.DictReader(f))
  assert [r['point'] for r in rows] == ['seed=0', 'seed=1']
  assert [r['seed'] for r in rows] == ['0', '1']
  assert all(r['status'] == 'done' and r['step'] == '3' for r in rows)
  losses = [float(r['eval_loss']) for r in rows]
  assert all(2.0 < l < 4.0 for l in losses) and losses[0] != losses[1]
  assert os.path.getsize(png_path) > 1000


def test_summary_of_points_not_run(tmp_path):
  points = sweep.plan(wsd.get_config('smoke'), CONFIG_ARG, [], ['seed=3'],
                      str(tmp_path))
  (row,) = sweep.summary_rows(points)
  assert (row['status'], row['eval_loss']) == ('not started', None)


def _emit_cli(tmp_path, *args):
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.sweep', f'--config={CONFIG_ARG}',
       '--sweep=optimizer.learning_rate=1e-3,3e-3', '--sweep=seed=0',
       '--config.num_steps=50', f'--workdir={tmp_path}',
       '--repo_dir=/home/me/dynamics', *args],
      cwd=sweep.REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  jobs = tmp_path / 'jobs'
  return out.stdout, {p.name: p.read_text() for p in jobs.iterdir()}


def test_emit_slurm_writes_one_sbatch_script_per_point(tmp_path):
  stdout, scripts = _emit_cli(tmp_path, '--emit=slurm', '--slurm_nodes=2',
                              '--slurm_gpus_per_node=8', '--slurm_time=02:00:00',
                              '--slurm_partition=gpu')
  assert '2 job scripts' in stdout
  name = 'optimizer.learning_rate=3e-3,seed=0'
  text = scripts[f'{name}.sh']
  workdir = os.path.join(str(tmp_path), name)
  for line in ['#SBATCH --nodes=2', '#SBATCH --ntasks-per-node=1',
               '#SBATCH --gpus-per-node=8', '#SBATCH --time=02:00:00',
               '#SBATCH --partition=gpu', '#SBATCH --signal=TERM@120',
               '#SBATCH --requeue', 'cd /home/me/dynamics',
               f'#SBATCH --output={tmp_path}/jobs/{name}-%j.out']:
    assert line + '\n' in text, line
  assert (tmp_path / 'jobs').is_dir()  # SLURM opens the log before the job.
  assert (f"srun python -m experiments.main --config={CONFIG_ARG} "
          '--config.num_steps=50 --config.optimizer.learning_rate=3e-3 '
          '--config.seed=0 --config.distributed=True '
          f'--workdir={workdir}\n') in text
  assert scripts['submit_all.sh'].splitlines()[-2:] == [
      f'sbatch {tmp_path}/jobs/optimizer.learning_rate=1e-3,seed=0.sh',
      f'sbatch {tmp_path}/jobs/optimizer.learning_rate=3e-3,seed=0.sh']
  for script in scripts.values():  # Valid bash.
    subprocess.run(['bash', '-n'], input=script, text=True, check=True)
  assert not os.path.exists(workdir)  # Nothing ran.


def test_emit_tpu_runs_the_point_on_every_worker(tmp_path):
  _, scripts = _emit_cli(tmp_path, '--emit=tpu', '--tpu_name=v4-32',
                         '--tpu_zone=us-central2-b')
  text = scripts['optimizer.learning_rate=1e-3,seed=0.sh']
  workdir = os.path.join(str(tmp_path), 'optimizer.learning_rate=1e-3,seed=0')
  assert ("gcloud compute tpus tpu-vm ssh v4-32 --zone=us-central2-b "
          "--worker=all '--command=cd /home/me/dynamics && python -m "
          f"experiments.main --config={CONFIG_ARG} --config.num_steps=50 "
          "--config.optimizer.learning_rate=1e-3 --config.seed=0 "
          f"--config.distributed=True --workdir={workdir}'\n") in text
  assert scripts['submit_all.sh'].count('\nbash ') == 2
  for script in scripts.values():
    subprocess.run(['bash', '-n'], input=script, text=True, check=True)
