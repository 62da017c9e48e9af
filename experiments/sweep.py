r"""Sweeps: the product of field values, one workdir per point, run or emitted.

Command (local, one point after another; ``--parallel=N`` runs N at a time):
  python -m experiments.sweep --config=configs/wsd.py \
      --sweep='optimizer.learning_rate=1e-3,3e-3,1e-2' --sweep='seed=0,1'

runs the 6 points ``optimizer.learning_rate=1e-3,seed=0`` ... each with
``python -m experiments.main`` into ``<workdir>/<point>`` (default workdir:
``runs/sweeps/<config.name>``), then writes ``<workdir>/summary.csv`` (one row
per point: the swept values, status, final step, final train/eval loss) and
``<workdir>/summary.png`` (final losses per point). A re-run skips the points
whose final checkpoint exists and resumes interrupted ones from their latest
checkpoint. ``--config.FIELD=VALUE`` overrides apply to every point.

Batch jobs: ``--emit=slurm`` or ``--emit=tpu`` runs nothing and writes
``<workdir>/jobs/<point>.sh`` plus ``<workdir>/jobs/submit_all.sh``:

* slurm: an ``sbatch`` script per point (``--slurm_nodes``,
  ``--slurm_tasks_per_node`` -- one task per host, JAX drives all of a host's
  GPUs --, ``--slurm_gpus_per_node``, ``--slurm_time``, ``--slurm_partition``),
  launching every task with ``srun``; ``--signal=TERM@120`` makes SLURM send
  the preemption notice two minutes before the time limit, so the run
  checkpoints and exits with code 75 (``dynamics.cli.EXIT_PREEMPTED``); the
  script then requeues its own job (``scontrol requeue``), which resumes.
  ``submit_all.sh`` submits each script with ``sbatch``.
* tpu: a script per point that runs the same command on every worker of the
  TPU VM slice ``--tpu_name`` in ``--tpu_zone`` (``gcloud compute tpus tpu-vm
  ssh --worker=all``); JAX finds the other hosts by itself.
  ``submit_all.sh`` runs the points one after another (a slice runs one job at
  a time); a point that exits with code 75 (preempted, checkpointed) is
  started again and resumes. The workdir must be on a file system every worker sees (e.g. a
  Filestore or gcsfuse mount): orbax writes checkpoints collectively.

Either way the repository must be at ``--repo_dir`` (default: here) on the
machines that run the jobs. The command exits 1 when a point of a local sweep
did not finish.
"""

import csv
import dataclasses
import itertools
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import flags
from ml_collections import config_flags

from dynamics import cli
from experiments import jobs

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (configs/*.py[:variant]).', lock_config=True)
_SWEEP = flags.DEFINE_multi_string(
    'sweep', [], "FIELD=V1,V2,...; repeat the flag for a product of fields.")
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Sweep directory (default: runs/sweeps/<config.name>).')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Points run at a time (local).')
_EMIT = flags.DEFINE_enum('emit', None, ['tpu', 'slurm'],
                          'Write job scripts instead of running.')
_REPO_DIR = flags.DEFINE_string('repo_dir', None,
                                'Repository path on the job machines.')
_PYTHON = flags.DEFINE_string('python', 'python', 'Python in the job scripts.')
_SLURM_NODES = flags.DEFINE_integer('slurm_nodes', 1, 'SLURM nodes per point.')
_SLURM_TASKS = flags.DEFINE_integer('slurm_tasks_per_node', 1,
                                    'Processes per node (1: JAX drives all GPUs).')
_SLURM_GPUS = flags.DEFINE_integer('slurm_gpus_per_node', 1, 'GPUs per node.')
_SLURM_TIME = flags.DEFINE_string('slurm_time', '24:00:00', 'Time limit.')
_SLURM_PARTITION = flags.DEFINE_string('slurm_partition', None, 'Partition.')
_TPU_NAME = flags.DEFINE_string('tpu_name', 'my-tpu', 'TPU VM slice name.')
_TPU_ZONE = flags.DEFINE_string('tpu_zone', 'us-central2-b', 'TPU zone.')


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SweepError(ValueError):
  """A malformed ``--sweep`` or an unknown field."""


@dataclasses.dataclass
class Point:
  """One run of a sweep.

  Attributes:
    name: ``field=value,...`` (also its directory name).
    values: field -> value as given on the command line.
    workdir: where ``experiments.main`` writes it.
    args: the ``experiments.main`` arguments (after ``python -m``).
  """
  name: str
  values: Dict[str, str]
  workdir: str
  args: List[str]


def parse_sweep(spec: str) -> Tuple[str, List[str]]:
  """``'a.b=1,2'`` -> ``('a.b', ['1', '2'])``."""
  field, sep, values = spec.partition('=')
  items = [v.strip() for v in values.split(',')]
  if not sep or not field.strip() or not all(items):
    raise SweepError(f'--sweep={spec!r}: expected FIELD=V1,V2,... '
                     "(e.g. 'optimizer.learning_rate=1e-3,3e-3')")
  return field.strip(), items


def check_value(config: Any, field: str, raw: str) -> None:
  """Raises ``SweepError`` unless ``field`` is declared and ``raw`` fits it."""
  node = config
  *path, leaf = field.split('.')
  for key in path:
    if key not in node or not hasattr(node[key], 'keys'):
      raise SweepError(f'--sweep {field}: unknown field (fields are declared '
                       'in dynamics/config_schema.py)')
    node = node[key]
  if leaf not in node:
    raise SweepError(f'--sweep {field}: unknown field (fields are declared in '
                     'dynamics/config_schema.py)')
  current = node[leaf]
  try:
    if isinstance(current, bool):
      if raw.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(raw)
    elif isinstance(current, (int, float)):
      float(raw) if isinstance(current, float) else int(raw)
  except ValueError:
    raise SweepError(f'--sweep {field}={raw!r}: not a valid '
                     f'{type(current).__name__} (current value '
                     f'{current!r})') from None


def dir_name(values: Dict[str, str]) -> str:
  name = ','.join(f'{k}={v}' for k, v in values.items())
  return re.sub(r'[^A-Za-z0-9._=,+-]', '_', name)


def plan(config: Any, config_arg: str, overrides: Sequence[str],
         sweeps: Sequence[str], root: str) -> List[Point]:
  """The points of the product of ``sweeps``, in command-line order.

  Args:
    config: the loaded config (to check the swept fields and values).
    config_arg: the ``--config`` value, e.g. ``configs/wsd.py:smoke``.
    overrides: ``--config.FIELD=VALUE`` arguments applied to every point.
    sweeps: ``FIELD=V1,V2,...`` strings; the last varies fastest.
    root: the sweep directory.

  Returns:
    One ``Point`` per combination (one point with no sweeps).
  """
  fields = [parse_sweep(s) for s in sweeps]
  names = [f for f, _ in fields]
  if len(set(names)) != len(names):
    raise SweepError(f'--sweep names a field twice: {names}')
  for field, values in fields:
    for v in values:
      check_value(config, field, v)
  points = []
  for combo in itertools.product(*[values for _, values in fields]):
    values = dict(zip(names, combo))
    name = dir_name(values) or 'default'
    workdir = os.path.join(os.path.abspath(root), name)
    args = (['-m', 'experiments.main', f'--config={config_arg}']
            + list(overrides)
            + [f'--config.{k}={v}' for k, v in values.items()]
            + [f'--workdir={workdir}'])
    points.append(Point(name, values, workdir, args))
  return points


def _open(workdir: str):
  """The point's `dynamics.runs.Run`, or None before it started."""
  from dynamics import runs  # Late: --help should not start JAX.
  try:
    return runs.Run.open(workdir)
  except runs.RunNotFoundError:
    return None


def final_step(workdir: str) -> Optional[int]:
  """The run's resolved ``num_steps`` (as it recorded it), if started."""
  run = _open(workdir)
  return None if run is None else int(run.config.num_steps)


def is_finished(workdir: str) -> bool:
  """Whether the point's final checkpoint exists."""
  run = _open(workdir)
  return run is not None and run.config.num_steps in run.steps


def run_local(points: Sequence[Point], parallel: int = 1,
              python: str = sys.executable, log=print) -> List[str]:
  """Runs the unfinished points, ``parallel`` at a time; returns their names.

  Each point's output goes to ``<workdir>/sweep.log``. A failing point is
  reported and the others still run.
  """
  todo = [p for p in points if not is_finished(p.workdir)]
  for p in points:
    if p not in todo:
      log(f'[sweep] {p.name}: finished, skipped')
  running: List[Tuple[Point, subprocess.Popen, Any]] = []
  queue = list(todo)
  while queue or running:
    while queue and len(running) < max(1, parallel):
      p = queue.pop(0)
      os.makedirs(p.workdir, exist_ok=True)
      out = open(os.path.join(p.workdir, 'sweep.log'), 'a')
      log(f'[sweep] {p.name}: running ({shlex.join([python] + p.args)})')
      running.append((p, subprocess.Popen([python] + p.args, cwd=REPO_ROOT,
                                          stdout=out, stderr=subprocess.STDOUT),
                      out))
    for entry in list(running):
      p, proc, out = entry
      if proc.poll() is not None:
        out.close()
        running.remove(entry)
        status = 'done' if is_finished(p.workdir) else f'exit {proc.returncode}'
        log(f'[sweep] {p.name}: {status} (log: {out.name})')
    time.sleep(0.2)
  return [p.name for p in todo]


def summary_rows(points: Sequence[Point]) -> List[Dict[str, Any]]:
  """One row per point: swept values, status and final losses."""
  rows = []
  for p in points:
    run, last = _open(p.workdir), {}
    for record in run.metrics() if run is not None else ():
      last.update(record)
    status = ('done' if is_finished(p.workdir) else
              'partial' if last else 'not started')
    rows.append(dict(point=p.name, **p.values, status=status,
                     step=last.get('step'), train_loss=last.get('train_loss'),
                     eval_loss=last.get('eval_loss'), workdir=p.workdir))
  return rows


def write_summary(points: Sequence[Point], root: str) -> Tuple[str, str]:
  """Writes ``summary.csv`` and ``summary.png`` in ``root``; returns paths."""
  rows = summary_rows(points)
  os.makedirs(root, exist_ok=True)
  csv_path = os.path.join(root, 'summary.csv')
  with open(csv_path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  from analysis import plots  # pylint: disable=g-import-not-at-top
  return csv_path, plots.sweep_summary(rows, os.path.join(root, 'summary.png'))


def _config_args(argv: Sequence[str]) -> Tuple[str, List[str]]:
  """The raw ``--config=`` value and ``--config.FIELD=`` overrides."""
  config_arg, overrides = None, []
  for arg in argv:
    if arg.startswith('--config='):
      config_arg = arg[len('--config='):]
    elif arg.startswith('--config.'):
      overrides.append(arg)
  if config_arg is None:
    raise cli.UserError('give the config as --config=PATH[:VARIANT]')
  path, sep, variant = config_arg.partition(':')
  if os.path.exists(path):  # Points run from the repository root.
    config_arg = os.path.relpath(os.path.abspath(path), REPO_ROOT) + sep + variant
  return config_arg, overrides


def main(argv):
  del argv
  config = _CONFIG.value
  config_arg, overrides = _config_args(sys.argv[1:])
  root = os.path.abspath(_WORKDIR.value or
                         os.path.join('runs', 'sweeps', config.name))
  try:
    points = plan(config, config_arg, overrides, _SWEEP.value, root)
  except SweepError as e:
    raise cli.UserError(f'sweep: {e}') from None
  if _EMIT.value:
    repo = os.path.abspath(_REPO_DIR.value or os.getcwd())
    opts = (dict(nodes=_SLURM_NODES.value, tasks=_SLURM_TASKS.value,
                 gpus=_SLURM_GPUS.value, time_limit=_SLURM_TIME.value,
                 partition=_SLURM_PARTITION.value) if _EMIT.value == 'slurm'
            else dict(tpu=_TPU_NAME.value, zone=_TPU_ZONE.value))
    paths = jobs.emit(_EMIT.value, points, root, repo=repo, python=_PYTHON.value,
                 **opts)
    print(f'{len(points)} job scripts in {os.path.dirname(paths[0])}; '
          f'submit them all with {paths[-1]}')
    return
  run_local(points, _PARALLEL.value)
  csv_path, png_path = write_summary(points, root)
  with open(csv_path) as f:
    print(f.read().rstrip())
  print(f'summary: {csv_path}\nplot:    {png_path}')
  unfinished = [p.name for p in points if not is_finished(p.workdir)]
  if unfinished:
    print(f'{len(unfinished)} of {len(points)} points did not finish: '
          f'{", ".join(unfinished)} (see their sweep.log)', file=sys.stderr)
    sys.exit(cli.EXIT_USER_ERROR)


if __name__ == '__main__':
  cli.run(main, required=['config'])
