"""Images grouped by the columns of a labels CSV (age by decade, race, ...), and the metrics of
each group: what `python -m gender_jax.evaluate --folder=F --labels_csv=CSV` adds.

A labels CSV has a relpath column (image paths relative to the evaluated folder), optionally the
label (male or label: 1 = male, 0 = female), and any columns to group by.
"""
import csv
import math
import os
import posixpath

import matplotlib
matplotlib.use('Agg')  # Files only: no display on servers and in tests.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from gender_jax.analysis import stats
from gender_jax import UserError

PATH_COLUMN = 'relpath'
LABEL_COLUMNS = ('male', 'label')  # The label, not a grouping.
MIN_GROUP_COUNT = 20  # Smaller groups are shown but left out of the largest gap.
DECADES = ['<20'] + [f'{d}-{d + 9}' for d in range(20, 80, 10)] + ['80+']
MISSING = 'unknown'


class LabelsCsvError(UserError, ValueError):
  """A labels CSV that cannot be read or does not describe the evaluated folder."""


def read_labels_csv(path):
  """{relpath: row} and the grouping columns of a labels CSV; fails naming what is wrong."""
  try:
    with open(path, newline='') as f:
      reader = csv.DictReader(f)
      rows = list(reader)
      columns = list(reader.fieldnames or [])
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise LabelsCsvError(f'cannot read --labels_csv {path}: {e}') from None
  if PATH_COLUMN not in columns:
    raise LabelsCsvError(f'{path} has no {PATH_COLUMN!r} column (found {columns or "none"}); '
                         f'expected a header like relpath,male,age,race, with image paths '
                         'relative to the evaluated folder.')
  table = {}
  for row in rows:
    table.setdefault(_normalise(row[PATH_COLUMN]), []).append(row)
  repeated = [p for p, r in table.items() if len(r) > 1]
  if repeated:
    raise LabelsCsvError(f'{path}: {len(repeated)} paths have more than one row '
                         f'(first: {repeated[0]}); expected one row per image.')
  groupings = [c for c in columns if c != PATH_COLUMN and c not in LABEL_COLUMNS]
  return {p: r[0] for p, r in table.items()}, groupings


def _normalise(relpath):
  return posixpath.normpath((relpath or '').strip().replace('\\', '/'))


def decade(value):
  """An age (or any number) binned by decades: '<20', '20-29', ..., '70-79', '80+'."""
  if value < 20:
    return DECADES[0]
  if value >= 80:
    return DECADES[-1]
  low = int(value // 10 * 10)
  return f'{low}-{low + 9}'


def _as_number(text):
  try:
    number = float(text)
  except (TypeError, ValueError):  # TypeError: a short row's missing cell (None).
    return None
  return number if math.isfinite(number) else None


def column_groups(values):
  """(group per value, display order): numeric columns by decade, others as they are."""
  present = [v.strip() for v in values if v and v.strip()]
  if present and all(_as_number(v) is not None for v in present):
    groups = [decade(float(v)) if v and v.strip() else MISSING for v in values]
    return groups, DECADES + [MISSING]
  return [v.strip() if v and v.strip() else MISSING for v in values], None


def match_rows(data, folder, table, path):
  """The CSV row of each evaluated image, in the Split's order; every image needs one."""
  root = os.path.abspath(folder)
  # Split paths are relative to the folder's root, which may be a wrapper folder inside it.
  relpaths = [_normalise(os.path.relpath(os.path.join(data.source_dir, p), root)
                         .replace(os.sep, '/')) for p in data.paths]
  missing = [p for p in relpaths if p not in table]
  if missing:
    example = next(iter(table), 'none')
    raise LabelsCsvError(
        f'{path}: {len(missing)} of {len(relpaths)} images in {folder} have no row (first: '
        f'{missing[0]}; the CSV has e.g. {example}); expected {PATH_COLUMN} relative to {folder}.')
  rows = [table[p] for p in relpaths]
  label_column = next((c for c in LABEL_COLUMNS if c in rows[0]), None) if rows else None
  if label_column:
    wrong = [p for p, r, y in zip(relpaths, rows, data.labels)
             if _as_number(r[label_column]) not in (None, float(y))]
    if wrong:
      raise LabelsCsvError(
          f'{path}: the {label_column!r} column disagrees with the folder\'s male/female '
          f'subfolders for {len(wrong)} images (first: {wrong[0]}); expected 1 = male, 0 = female.')
  return rows


def evaluate_groups(labels, logits, rows, columns):
  """{column: stats.group_metrics} of the grouping columns of the matched CSV rows."""
  result = {}
  for column in columns:
    groups, order = column_groups([r[column] for r in rows])
    result[column] = stats.group_metrics(labels, logits, groups, MIN_GROUP_COUNT, order)
  return result


def plot_groups(groups, overall_accuracy, path):
  """A panel per column: accuracy per group with its 95% interval, counts under the names."""
  fig, axes = plt.subplots(1, len(groups), figsize=(max(5, 1 + 0.8 * sum(
      len(g['groups']) for g in groups.values())), 4), squeeze=False)
  for ax, (column, g) in zip(axes[0], groups.items()):
    names = list(g['groups'])
    accuracy = [g['groups'][n]['accuracy'] for n in names]
    low, high = zip(*(g['groups'][n]['accuracy_interval'] for n in names))
    small = [g['groups'][n]['count'] < MIN_GROUP_COUNT for n in names]
    ax.bar([f"{n}\nn={g['groups'][n]['count']}" for n in names], accuracy,
           color=['lightgray' if s else 'C0' for s in small],
           yerr=[[a - l for a, l in zip(accuracy, low)], [h - a for a, h in zip(accuracy, high)]],
           capsize=3)
    ax.axhline(overall_accuracy, ls='--', color='gray', lw=1)
    ax.set(ylim=(0, 1.05), ylabel='accuracy', title=f'by {column}')
    ax.tick_params(axis='x', labelsize=8)
  fig.suptitle('Accuracy per group (95% bootstrap intervals; dashed: all; grey: n < '
               f'{MIN_GROUP_COUNT})', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def format_groups(column, g):
  """One column's groups as a table, with the largest accuracy gap between large groups."""
  gap = g['largest_gap']
  title = (f"by {column}: largest accuracy gap {gap['gap']:.4f} ({gap['highest']} vs "
           f"{gap['lowest']}, groups of >= {gap['min_count']})" if gap else
           f'by {column}: fewer than two groups of >= {MIN_GROUP_COUNT}, no gap')
  width = max([len('group')] + [len(n) for n in g['groups']])
  lines = [title, f"  {'group':<{width}}  {'count':>6}  {'accuracy':<24}  balanced accuracy"]
  for name, m in g['groups'].items():
    low, high = m['accuracy_interval']
    accuracy = f"{m['accuracy']:.4f} [{low:.4f}, {high:.4f}]"
    lines.append(f"  {name:<{width}}  {m['count']:>6}  {accuracy:<24}  "
                 f"{m['balanced_accuracy']:.4f}")
  return '\n'.join(lines)
