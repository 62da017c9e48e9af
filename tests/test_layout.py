"""The shape of the house: layering, no import cycles, modules of a readable size.

Imports are read from the source (``ast``), function-level ones included: a
late import that only hides a cycle from Python is still a cycle. Importing
``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first, so it depends
on those packages too (an implied edge). The notebooks' jupytext sources
(``analysis/notebooks/*.py``) are importers only: of `dynamics` and `analysis`.
"""

import ast
import glob
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
  """``{module name: path}`` of every project module (notebooks apart)."""
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
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, 'analysis', 'notebooks', '*.py')))
# What a notebook may import from the project: the library and the analysis.
NOTEBOOK_LAYERS = ('dynamics', 'analysis')


def _imports(path):
  """Project modules imported (explicitly) anywhere in the file at ``path``."""
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


def _parents(module):
  """The packages Python initializes before ``module``: ``a``, ``a.b`` of ``a.b.c``."""
  parts = module.split('.')
  return {'.'.join(parts[:i]) for i in range(1, len(parts))} & set(MODULES)


def _with_implied(module, deps):
  """``deps`` and their packages, less ``module``'s own packages: Python has
  initialized (or is initializing) those before ``module`` runs."""
  return (deps | {q for d in deps for q in _parents(d)}) - _parents(module) - {module}


EXPLICIT = {m: _imports(p) - {m} for m, p in MODULES.items()}
GRAPH = {m: _with_implied(m, deps) for m, deps in EXPLICIT.items()}


def _top(module):
  return module.split('.')[0]


@pytest.mark.parametrize('lower, forbidden', [
    ('dynamics', ('analysis', 'experiments', 'configs')),
    ('analysis', ('experiments',)),
    ('configs', ('dynamics', 'analysis', 'experiments')),
])
def test_layers_import_only_downwards(lower, forbidden):
  bad = sorted(f'{m} imports {d}' for m, deps in EXPLICIT.items()
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


def _is_package(module):
  return MODULES[module].endswith('__init__.py')


def _exempt(a, b):
  """Whether edge ``a -> b`` is a package's ``__init__`` importing its own
  submodule (re-exporting it), the one edge a real cycle may not be made of
  alone."""
  return _is_package(a) and b.startswith(a + '.')


def real_cycles():
  """Every cycle with an edge that is not `_exempt`."""
  return [c for c in _cycles()
          if not all(_exempt(a, b) for a, b in zip(c, c[1:] + c[:1]))]


def test_no_import_cycles():
  cycles = real_cycles()
  assert not cycles, ' ; '.join(' -> '.join(c + (c[0],)) for c in cycles)


def test_the_cycle_check_sees_a_cycle(monkeypatch):
  """The check itself works: a planted cycle is found."""
  monkeypatch.setitem(GRAPH, 'dynamics.types', GRAPH['dynamics.types'] | {'dynamics.runs'})
  assert any('dynamics.types' in c and 'dynamics.runs' in c for c in real_cycles())


def test_a_cycle_through_a_package_init_is_real(monkeypatch):
  """``step -> optim (package) -> optim.sam -> step`` fails on import whoever
  comes first: the package importing its own submodule does not exempt it.
  Nor does it exempt a submodule importing its own package explicitly."""
  assert 'dynamics.optim' in GRAPH['dynamics.step']
  assert 'dynamics.optim.sam' in GRAPH['dynamics.optim']
  assert not real_cycles()
  monkeypatch.setitem(GRAPH, 'dynamics.optim.sam',
                      GRAPH['dynamics.optim.sam'] | {'dynamics.step'})
  assert ('dynamics.optim', 'dynamics.optim.sam', 'dynamics.step') in real_cycles()
  monkeypatch.setitem(GRAPH, 'dynamics.optim.sam', {'dynamics.optim'})
  assert real_cycles() == [('dynamics.optim', 'dynamics.optim.sam')]


def test_implied_edges_reach_a_package_init():
  """``import a.b.c`` runs ``a/b/__init__.py``: a module importing a
  submodule depends on its package too (but not on its own packages)."""
  deps = _with_implied('analysis.jacobian.training',
                       {'dynamics.optim.sam', 'analysis.jacobian.products'})
  assert deps == {'dynamics', 'dynamics.optim', 'dynamics.optim.sam',
                  'analysis.jacobian.products'}


def test_notebooks_import_only_the_library_and_the_analysis():
  """The notebooks read ``results/*.json`` through `analysis.results`: no
  ``experiments`` or ``configs``, no ``sys.path`` preamble."""
  assert len(NOTEBOOKS) >= 6, NOTEBOOKS
  for path in NOTEBOOKS:
    deps = _imports(path)
    name = os.path.relpath(path, ROOT)
    assert deps, f'{name} imports nothing from the project'
    bad = sorted(d for d in deps if _top(d) not in NOTEBOOK_LAYERS)
    assert not bad, f'{name} imports {bad}'
    with open(path) as f:
      assert 'sys.path' not in f.read(), f'{name} edits sys.path'


def test_notebooks_and_their_ipynb_twins_hold_the_same_code():
  """The suite executes the ``.ipynb``; the checks above read the ``.py``."""
  jupytext = pytest.importorskip('jupytext')
  for path in NOTEBOOKS:
    code = lambda nb: [c.source for c in nb.cells if c.cell_type == 'code']
    twin = path[:-3] + '.ipynb'
    assert code(jupytext.read(path)) == code(jupytext.read(twin)), (
        f'{os.path.relpath(twin, ROOT)} differs from its .py: run '
        f'jupytext --sync {os.path.relpath(path, ROOT)}')


def test_modules_stay_readable():
  long = {os.path.relpath(p, ROOT): n for p in MODULES.values()
          if (n := sum(1 for _ in open(p))) > MAX_LINES}
  unexplained = {p: n for p, n in long.items() if p not in LONG_MODULES}
  assert not unexplained, (
      f'modules over {MAX_LINES} lines (split them, or add them to '
      f'LONG_MODULES with the paper they implement): {unexplained}')
