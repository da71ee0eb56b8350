"""README.md's Layout table matches the tree: every module listed, every listed path there."""
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def layout_paths():
  """The paths the Layout table's first column names; `a/b.py`, `c.py` means a/b.py and a/c.py."""
  readme = (REPO / 'README.md').read_text()
  table = readme.split('\n## Layout\n', 1)[1].split('\n## ', 1)[0]
  paths = []
  for row in re.findall(r'^\| (.+?) \|', table, re.MULTILINE)[2:]:  # After header and rule.
    folder = ''
    for name in re.findall(r'`([^`]+)`', row):
      # From the repository's root: a file (its folder serves the next names) or a folder.
      if '/' in name:
        paths.append(name)
        folder = name.rsplit('/', 1)[0] if not name.endswith('/') else folder
      else:
        paths.append(f'{folder}/{name}')
  return paths


def test_every_path_in_the_layout_exists():
  paths = layout_paths()
  assert len(paths) > 20
  assert [p for p in paths if not (REPO / p).exists()] == []


def test_every_module_of_the_package_is_in_the_layout():
  modules = {f'gender_jax/{p.name}' for p in (REPO / 'gender_jax').glob('*.py')
             if p.name != '__init__.py'}
  assert sorted(modules - set(layout_paths())) == []
