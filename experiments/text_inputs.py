"""The input files of ``experiments.prepare_text``: which files, their
documents as text pieces, and which of them cannot be parsed
(``--skip_bad_files``)."""

import glob
import gzip
import io
import json
import os
import zlib
from typing import Iterator, List, Sequence, Tuple

from dynamics import cli

TEXT_SUFFIXES = ('.txt', '.md', '.py', '.rst', '.json', '.jsonl')
_CHUNK = 1 << 20  # Characters per piece of a plain-text document.


def input_files(pattern: str, what: str = '--input') -> List[str]:
  """The files ``pattern`` names (file, directory or glob), sorted."""
  if os.path.isdir(pattern):
    files = [os.path.join(d, f) for d, _, names in os.walk(pattern)
             for f in names
             if f.removesuffix('.gz').endswith(TEXT_SUFFIXES)]
  else:
    files = [f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f)]
  if not files:
    raise cli.UserError(f'{what}={pattern}: no such file, or no text files')
  return sorted(files)


def pieces(path: str) -> Iterator[Tuple[str, bool]]:
  """``(text, ends_a_document)`` pieces of one file (``experiments.prepare_text``'s docstring).

  Raises:
    cli.UserError: naming ``path:line`` where the file cannot be parsed (a
      JSON line without a "text" field, a corrupt or truncated gzip).
  """
  line = [0]
  try:
    yield from _parsed_pieces(path, line)
  except (OSError, EOFError, zlib.error) as e:
    raise cli.UserError(f'{path}:{line[0] + 1}: cannot be read '
                        f'({type(e).__name__}: {e})') from None


def bad_files(files: Sequence[str]) -> List[Tuple[str, str]]:
  """``(file, why)`` of each of ``files`` that `pieces` cannot parse
  (each file is read through once)."""
  bad = []
  for path in files:
    try:
      for _ in pieces(path):
        pass
    except cli.UserError as e:
      bad.append((path, str(e)))
  return bad


def usable_files(files: Sequence[str], what: str) -> List[str]:
  """``files`` less the unparsable ones (`bad_files`), each listed on
  stdout (``--skip_bad_files``).

  Raises:
    cli.UserError: none of ``files`` can be parsed.
  """
  bad = bad_files(files)
  if bad:
    print(f'{what}: skipping {len(bad)} file(s) that cannot be parsed '
          '(--skip_bad_files):')
    for _, why in bad:
      print(f'  {why}')
  skipped = {path for path, _ in bad}
  good = [f for f in files if f not in skipped]
  if not good:
    raise cli.UserError(f'{what}: no file can be parsed')
  return good


def _parsed_pieces(path: str, line: List[int]) -> Iterator[Tuple[str, bool]]:
  raw = open(path, 'rb')
  with raw:
    stream = gzip.GzipFile(fileobj=raw) if path.endswith('.gz') else raw
    text = io.TextIOWrapper(stream, encoding='utf-8', errors='replace')
    if path.removesuffix('.gz').endswith(('.json', '.jsonl')):
      for number, row in enumerate(text, 1):
        line[0] = number
        if row.strip():
          try:
            yield json.loads(row)['text'], True
          except (ValueError, KeyError, TypeError):
            raise cli.UserError(f'{path}:{number}: not a JSON object with a '
                                '"text" field') from None
      return
    piece = text.read(_CHUNK)
    while piece:
      piece += text.readline()  # End pieces at line breaks.
      line[0] += piece.count('\n')
      following = text.read(_CHUNK)
      yield piece, not following
      piece = following
