"""README.md stays a short guide: set-up first, its organization table matching the package, its
links to docs/ whole."""
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / 'README.md'


def organization_paths():
  """The paths the "Codebase organization" table's first column names, from the repository's
  root. In a row, `a/b.py` (or a folder `a/`) sets the folder a bare name after it is in."""
  table = README.read_text().split('\n## Codebase organization\n', 1)[1].split('\n## ', 1)[0]
  paths = []
  for row in re.findall(r'^\| (.+?) \|', table, re.MULTILINE)[2:]:  # After header and rule.
    folder = ''
    for name in re.findall(r'`([^`]+)`', row):
      if '/' in name:
        paths.append(name)
        folder = name.rstrip('/') if name.endswith('/') else name.rsplit('/', 1)[0]
      else:
        paths.append(f'{folder}/{name}')
  return paths


def linked_files():
  """The README's links to files of the repository (not web addresses), without any #anchor."""
  targets = re.findall(r'\]\(([^)\s]+)\)', README.read_text())
  return [t.split('#', 1)[0] for t in targets
          if not t.startswith(('http://', 'https://', '#', 'mailto:'))]


def test_every_path_in_the_organization_table_exists():
  paths = organization_paths()
  assert len(paths) > 20
  assert [p for p in paths if not (REPO / p).exists()] == []


def test_every_module_of_the_package_is_in_the_organization_table():
  modules = {p.relative_to(REPO).as_posix() for p in (REPO / 'gender_jax').rglob('*.py')
             if p.name != '__init__.py'}
  assert sorted(modules - set(organization_paths())) == []


def test_readme_is_at_most_300_lines():
  assert len(README.read_text().splitlines()) <= 300


def test_first_40_lines_train_the_tiny_config_and_run_the_tests():
  top = '\n'.join(README.read_text().splitlines()[:40])
  assert 'configs/tiny.py' in top
  assert 'bash .ci/run' in top


def test_every_docs_page_the_readme_links_to_exists():
  pages = [t for t in linked_files() if t.startswith('docs/') and t.endswith('.md')]
  assert {'docs/results.md', 'docs/troubleshooting.md'} <= set(pages)
  assert [p for p in pages if not (REPO / p).is_file()] == []
