"""The persistent compilation cache of the analysis commands (issue 26, 5)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = """
import sys
from dynamics import compile_cache
path = compile_cache.enable(sys.argv[1])
import jax, jax.numpy as jnp
print(path, jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).sum())
"""


def _python(*args, env=None):
  # Without the suite's threshold (conftest): JAX's variables win over
  # `enable`'s "every compilation".
  base = {k: v for k, v in os.environ.items()
          if k != 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'}
  return subprocess.run([sys.executable, '-c', _SCRIPT, *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env={**base, 'PYTHONPATH': ROOT, **(env or {})})


def test_enable_writes_compilations_to_the_cache_and_off_turns_it_off(
    tmp_path):
  proc = _python(str(tmp_path / 'cache'))
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith(str(tmp_path / 'cache'))
  assert os.listdir(tmp_path / 'cache')   # The jitted function, on disk.
  proc = _python(str(tmp_path / 'off'),
                 env={'DYNAMICS_COMPILATION_CACHE': 'off'})
  assert proc.returncode == 0 and proc.stdout.startswith('None')
  assert not os.path.exists(tmp_path / 'off')


COMMANDS = ('analysis.hessian', 'analysis.jacobian', 'analysis.landscape',
            'analysis.ntk', 'experiments.main')


def test_every_command_has_the_flag_in_its_own_help():
  for command in COMMANDS:
    proc = subprocess.run([sys.executable, '-m', command, '--help'], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert '--[no]compilation_cache' in proc.stdout, (command, proc.stderr)


def test_the_commands_turn_the_cache_on_unless_told_not_to(tmp_path):
  """The cache directory is made when a command starts (before anything
  compiles: here the command stops at once, on a run that is not there or
  a file where the run's directory would be)."""
  in_the_way = tmp_path / 'file'
  in_the_way.write_text('')
  for command in ('analysis.ntk', 'analysis.landscape', 'experiments.main'):
    for flag, made in (([], True), (['--nocompilation_cache'], False)):
      cache = tmp_path / f'{command}{made}'
      args = ['--config=configs/wsd.py:smoke', f'--workdir={in_the_way}'
              ] if command.startswith('experiments') else [
                  f'--workdir={tmp_path / "none"}']
      proc = subprocess.run(
          [sys.executable, '-m', command, *args, *flag], cwd=ROOT,
          capture_output=True, text=True, timeout=300,
          env={**os.environ, 'PYTHONPATH': ROOT,
               'DYNAMICS_COMPILATION_CACHE': str(cache)})
      assert proc.returncode != 0  # Nothing to analyse, nothing compiled.
      assert os.path.isdir(cache) == made, (command, flag, proc.stderr)
