r"""The LLM-scale figures of the README's "Running the papers' settings" on a
CPU: the token reader against training, and one bf16 train step of the
LLaMA-60M/130M/350M and GPT-2 small shapes.

  python -m experiments.bench_llm_cpu [--results=results/bench_llm_cpu.json]

Runs `experiments.bench_data` and `experiments.bench_step` (``--size=`` each
shape, a small batch, no baseline, ``--peak_flops`` the CPU's measured matmul
throughput) in fresh processes, one after the other, and gathers what they
write into one file with the commands, versions and provenance (each
command's own provenance is kept under ``parts``). About 15 minutes on an
idle 2-core CPU; LLaMA-350M's step needs ~6 GB of memory.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile

from absl import flags

from dynamics import cli
from dynamics import outputs  # Also takes the start load (provenance).

PEAK_TEXT = '1.26e11'  # The development CPU's measured matmul FLOP/s.
COMMANDS = {
    'reader': 'experiments.bench_data --tokens=50000000 --batches=100',
    'llama60m': 'experiments.bench_step --size=llama60m --batch_size=2 '
                '--steps=2 --repeats=3 --baseline=false',
    'llama130m': 'experiments.bench_step --size=llama130m --batch_size=1 '
                 '--steps=2 --repeats=3 --baseline=false',
    'llama350m': 'experiments.bench_step --size=llama350m --batch_size=1 '
                 '--steps=1 --repeats=2 --baseline=false',
    'gpt2': 'experiments.bench_step --size=gpt2 --batch_size=1 --steps=1 '
            '--repeats=3 --baseline=false',
}

_RESULTS = flags.DEFINE_string('results', 'results/bench_llm_cpu.json',
                               'Where to write the gathered figures.')
_ONLY = flags.DEFINE_list('only', None, 'Run only these parts (names of '
                          'COMMANDS), for a quick check.')


def command(name: str) -> str:
  """The recorded command line of part ``name``."""
  peak = '' if name == 'reader' else f' --peak_flops={PEAK_TEXT}'
  return f'python -m {COMMANDS[name]}{peak}'


def run_part(name: str, tmp: str) -> dict:
  """Runs part ``name`` in a fresh process; returns the JSON it wrote."""
  path = os.path.join(tmp, f'{name}.json')
  args = command(name).split()[1:] + [f'--results={path}']
  proc = subprocess.run([sys.executable, *args], capture_output=True,
                        text=True, check=False)
  if proc.returncode or not os.path.exists(path):
    raise RuntimeError(f'{command(name)} failed:\n{proc.stderr[-3000:]}')
  print(proc.stdout.strip().splitlines()[-1], flush=True)
  with open(path) as f:
    return json.load(f)


def step_figures(part: dict) -> dict:
  """The README's figures of one `bench_step` record."""
  return {'params': part['params'], 'tokens_per_step': part['tokens_per_step'],
          'dtype': part['dtype'], 's_per_step': part['ours_s_per_step'],
          'tokens_per_s': part['ours_tokens_per_s'],
          'gflops_per_s': part['gflops_per_s'],
          f'mfu_vs_{PEAK_TEXT}': part['mfu']}


def memory_gb() -> float:
  """The machine's memory in GB (``MemTotal`` of /proc/meminfo; 0 where
  there is none)."""
  try:
    with open('/proc/meminfo') as f:
      kb = next(int(l.split()[1]) for l in f if l.startswith('MemTotal:'))
  except (OSError, StopIteration, ValueError):
    return 0.0
  return kb / 2 ** 20


def main(argv):
  del argv
  names = _ONLY.value or list(COMMANDS)
  unknown = sorted(set(names) - set(COMMANDS))
  if unknown:
    raise cli.UserError(f'--only: unknown parts {unknown}; known: '
                        f'{list(COMMANDS)}')
  with tempfile.TemporaryDirectory() as tmp:
    parts = {name: run_part(name, tmp) for name in names}
  record = {
      'machine': f'{os.cpu_count()}-core {platform.machine()} CPU, '
                 f'{memory_gb():.0f} GB; no accelerator (its load: '
                 'provenance)',
      'commands': [command(n) for n in names],
      'reader': {k: v for k, v in parts.get('reader', {}).items()
                 if k != 'provenance'},
      'train_step': {n: step_figures(p) for n, p in parts.items()
                     if n != 'reader'},
      'parts_provenance': {n: p.get('provenance') for n, p in parts.items()},
      'jax': parts[names[-1]].get('jax')}
  print(outputs.wrote([_RESULTS.value], outputs.write_json(
      _RESULTS.value, record, provenance=True)))


if __name__ == '__main__':
  cli.run(main)
