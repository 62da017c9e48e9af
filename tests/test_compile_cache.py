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
  return subprocess.run([sys.executable, '-c', _SCRIPT, *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'PYTHONPATH': ROOT, **(env or {})})


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


def test_the_hessian_command_has_the_flag():
  proc = subprocess.run([sys.executable, '-m', 'analysis.hessian',
                         '--helpfull'], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert '--[no]compilation_cache' in proc.stdout, proc.stderr
