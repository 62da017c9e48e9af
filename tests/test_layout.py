"""The shape of the house: layering, no import cycles, modules of a readable size.

Imports are read from the source (``ast``), function-level ones included: a
late import that only hides a cycle from Python is still a cycle.
"""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('dynamics', 'analysis', 'experiments', 'configs')
# One paper's algorithm with its docstrings may run longer than 400 lines.
LONG_MODULES = {
    'dynamics/optim/adamp.py': 'SGDP/AdamP (Heo et al., 2021), one algorithm',
    'dynamics/optim/stable_spam.py': 'Stable-SPAM (Huang et al., 2025), one algorithm',
}
MAX_LINES = 400
# The one dynamics module configs/ may import: the declaration of every field.
JAX_FREE_FOR_CONFIGS = ('dynamics.config_schema',)


def _modules():
  """``{module name: path}`` of every project module (notebooks excluded)."""
  out = {}
  for package in PACKAGES:
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, package)):
      dirnames[:] = [d for d in dirnames
                     if d not in ('notebooks', '__pycache__')]
      for name in filenames:
        if name.endswith('.py'):
          path = os.path.join(dirpath, name)
          rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
          if rel[-1] == '__init__':
            rel = rel[:-1]
          out['.'.join(rel)] = path
  return out


MODULES = _modules()


def _imports(path):
  """Project modules imported anywhere in the file at ``path``."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      # `from pkg import mod` imports pkg.mod when it is a module.
      names = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in MODULES
               else node.module for a in node.names]
    else:
      continue
    for name in names:
      while name and name not in MODULES:
        name = name.rpartition('.')[0]
      if name:
        found.add(name)
  return found


GRAPH = {m: _imports(p) - {m} for m, p in MODULES.items()}


def _top(module):
  return module.split('.')[0]


@pytest.mark.parametrize('lower, forbidden', [
    ('dynamics', ('analysis', 'experiments', 'configs')),
    ('analysis', ('experiments',)),
    ('configs', ('dynamics', 'analysis', 'experiments')),
])
def test_layers_import_only_downwards(lower, forbidden):
  bad = sorted(f'{m} imports {d}' for m, deps in GRAPH.items()
               if _top(m) == lower for d in deps if _top(d) in forbidden
               and d not in JAX_FREE_FOR_CONFIGS)
  assert not bad, bad


def test_configs_load_without_jax():
  """Config files (and through them ``--help``) never import JAX: the one
  dynamics module they may import, the field declaration, is JAX-free."""
  code = ('import sys; from configs import base, wsd; wsd.get_config(); '
          'print(sorted(m for m in sys.modules if m.split(".")[0] in '
          '("jax", "flax", "optax", "orbax")))')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True,
                       capture_output=True, text=True).stdout.strip()
  assert out == '[]', out


def _cycles():
  """Every cycle found by depth-first search (each reported once)."""
  cycles, state, stack = set(), {}, []

  def visit(m):
    state[m] = 'open'
    stack.append(m)
    for d in sorted(GRAPH[m]):
      if state.get(d) == 'open':
        cycle = stack[stack.index(d):]
        i = cycle.index(min(cycle))
        cycles.add(tuple(cycle[i:] + cycle[:i]))
      elif d not in state:
        visit(d)
    stack.pop()
    state[m] = 'done'

  for m in sorted(GRAPH):
    if m not in state:
      visit(m)
  return sorted(cycles)


def test_no_import_cycles():
  # A package's __init__ re-exporting its submodules is not a cycle: the
  # submodules import each other by their full names, never the package.
  cycles = [c for c in _cycles()
            if not any(a == b.rpartition('.')[0] or b == a.rpartition('.')[0]
                       for a, b in zip(c, c[1:] + c[:1]))]
  assert not cycles, ' ; '.join(' -> '.join(c + (c[0],)) for c in cycles)


def test_the_cycle_check_sees_a_cycle(monkeypatch):
  """The check itself works: a planted cycle is found."""
  monkeypatch.setitem(GRAPH, 'dynamics.types', GRAPH['dynamics.types'] | {'dynamics.runs'})
  assert any('dynamics.types' in c and 'dynamics.runs' in c for c in _cycles())


def test_modules_stay_readable():
  long = {os.path.relpath(p, ROOT): n for p in MODULES.values()
          if (n := sum(1 for _ in open(p))) > MAX_LINES}
  unexplained = {p: n for p, n in long.items() if p not in LONG_MODULES}
  assert not unexplained, (
      f'modules over {MAX_LINES} lines (split them, or add them to '
      f'LONG_MODULES with the paper they implement): {unexplained}')
