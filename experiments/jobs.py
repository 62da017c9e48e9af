"""Batch-job scripts for sweep points: SLURM (``sbatch``) and TPU VM slices.

See ``experiments/sweep.py`` (``--emit=slurm|tpu``). A preempted run exits
with `dynamics.cli.EXIT_PREEMPTED` after checkpointing; the scripts start it
again (SLURM: ``scontrol requeue``; TPU: a loop), and it resumes.
"""

import os
import re
import shlex
from typing import Any, List, Optional, Sequence

from dynamics.cli import EXIT_PREEMPTED


def _slurm_script(p: Any, repo: str, python: str, nodes: int, tasks: int,
                  gpus: int, time_limit: str, partition: Optional[str],
                  log_dir: str) -> str:
  args = list(p.args)
  if nodes * tasks > 1:  # SLURM's environment also says so; explicit is clearer.
    args.insert(-1, '--config.distributed=True')
  lines = [
      '#!/bin/bash',
      f"#SBATCH --job-name={re.sub(r'[^A-Za-z0-9._-]', '_', p.name)[:64]}",
      f'#SBATCH --nodes={nodes}',
      f'#SBATCH --ntasks-per-node={tasks}',
      f'#SBATCH --gpus-per-node={gpus}',
      f'#SBATCH --time={time_limit}',
      # SLURM opens the log before the job runs: a directory that exists
      # now (the workdir is made by the run).
      f'#SBATCH --output={log_dir}/{p.name}-%j.out',
      '#SBATCH --open-mode=append',
      '# Preemption notice 2 minutes before the time limit: the run saves a',
      f'# checkpoint at the next step and exits {EXIT_PREEMPTED}; the script then',
      '# requeues the job (--requeue makes it requeueable), which resumes.',
      '#SBATCH --signal=TERM@120',
      '#SBATCH --requeue',
  ]
  if partition:
    lines.append(f'#SBATCH --partition={partition}')
  lines += ['set -uo pipefail', f'mkdir -p {shlex.quote(p.workdir)}',
            f'cd {shlex.quote(repo)}', 'srun ' + shlex.join([python] + args),
            'code=$?',
            f'# {EXIT_PREEMPTED}: preempted and checkpointed; requeue to resume.',
            f'if [ "$code" -eq {EXIT_PREEMPTED} ]; then',
            '  scontrol requeue "$SLURM_JOB_ID"',
            '  exit 0',
            'fi',
            'exit "$code"', '']
  return '\n'.join(lines)


def _tpu_script(p: Any, repo: str, python: str, tpu: str, zone: str) -> str:
  args = list(p.args)
  args.insert(-1, '--config.distributed=True')  # JAX reads the slice's hosts.
  remote = f'cd {shlex.quote(repo)} && ' + shlex.join([python] + args)
  return '\n'.join([
      '#!/bin/bash',
      f'# Sweep point {p.name} on every worker of TPU VM slice {tpu} ({zone}).',
      '# Each worker runs the same command; JAX finds the other hosts itself.',
      f'# Exit code {EXIT_PREEMPTED}: preempted and checkpointed; run again to resume.',
      'set -uo pipefail',
      'while true; do',
      '  ' + shlex.join(['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', tpu,
                         f'--zone={zone}', '--worker=all',
                         f'--command={remote}']),
      '  code=$?',
      f'  [ "$code" -eq {EXIT_PREEMPTED} ] || exit "$code"',
      '  echo "preempted; resuming" >&2',
      'done',
      ''])


def emit(kind: str, points: Sequence[Any], root: str, *, repo: str,
         python: str = 'python', **opts) -> List[str]:
  """Writes ``root/jobs/<point>.sh`` and ``submit_all.sh``; returns the paths.
  SLURM logs go to ``root/jobs/<point>-<job id>.out``.

  Args:
    kind: 'slurm' or 'tpu'.
    points: from ``plan``.
    root: the sweep directory.
    repo: the repository path on the job machines.
    python: the interpreter there.
    **opts: slurm: nodes, tasks, gpus, time_limit, partition; tpu: tpu, zone.
  """
  jobs = os.path.join(root, 'jobs')
  os.makedirs(jobs, exist_ok=True)
  paths = []
  for p in points:
    text = (_slurm_script(p, repo, python, log_dir=jobs, **opts)
            if kind == 'slurm'
            else _tpu_script(p, repo, python, **opts))
    path = os.path.join(jobs, f'{p.name}.sh')
    with open(path, 'w') as f:
      f.write(text)
    os.chmod(path, 0o755)
    paths.append(path)
  launcher = 'sbatch' if kind == 'slurm' else 'bash'
  submit = os.path.join(jobs, 'submit_all.sh')
  with open(submit, 'w') as f:
    f.write('#!/bin/bash\n# Submits every point of the sweep.\nset -euo pipefail\n'
            + ''.join(f'{launcher} {shlex.quote(path)}\n' for path in paths))
  os.chmod(submit, 0o755)
  return paths + [submit]
