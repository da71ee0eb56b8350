"""The package's shape stays readable: short modules, shallow imports, no import cycles.

An import chain is a path through the package's own imports (module-level and inside functions,
from the source by ast), counted in modules: main -> train -> protocol -> ... The packages'
__init__ files hold docstrings only and are not counted.
"""
import ast
import functools
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'gender_jax'
MAX_MODULE_LINES = 450
MAX_CHAIN = 6


def module_name(path):
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob('*.py')}


def imported_modules(path):
  """The package's modules that `path` imports: `from a.b import c` names module a.b.c where
  there is one, else a name of module a.b."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      found |= {f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in MODULES else node.module
                for a in node.names}
  return {m for m in found if m in MODULES and MODULES[m].name != '__init__.py'}


GRAPH = {m: imported_modules(p) for m, p in MODULES.items() if p.name != '__init__.py'}


@functools.cache
def longest_chain(module, visiting=()):
  """The longest import chain starting at `module`, as a tuple of modules."""
  assert module not in visiting, f'import cycle: {" -> ".join(visiting + (module,))}'
  chains = [longest_chain(m, visiting + (module,)) for m in sorted(GRAPH[module])]
  return (module,) + max(chains, key=len, default=())


def test_no_module_is_longer_than_the_limit():
  lengths = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
  assert {m: n for m, n in lengths.items() if n > MAX_MODULE_LINES} == {}


def test_the_longest_import_chain_is_short_and_acyclic():
  longest = max((longest_chain(m) for m in GRAPH), key=len)
  assert len(longest) <= MAX_CHAIN, ' -> '.join(longest)


def test_the_chain_is_measured_through_the_packages_imports():
  assert 'gender_jax.data.protocol' in GRAPH['gender_jax.training.train']
  assert 'gender_jax.data.batching' in GRAPH['gender_jax.training.sharded']
  assert len(longest_chain('gender_jax.main')) >= 4
