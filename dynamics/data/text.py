"""Byte-level text: local files, and the optional Hugging Face / TFDS loaders."""

import importlib
import pathlib
import sysconfig
from typing import Any, Iterator, Optional

import numpy as np

from dynamics.data.base import _EVAL, _TRAIN, Batch, Dataset, DatasetInfo, _rng


def default_text_dir() -> str:
  """The Python standard library's source directory (always present)."""
  return sysconfig.get_paths()['stdlib']


def min_text_bytes(seq_len: int) -> int:
  """The fewest bytes of text `ByteText` takes for ``seq_len``: twenty
  windows, so the held-out 10% holds at least two."""
  return 20 * (seq_len + 1)


def text_files(root: pathlib.Path, ordered: bool = True
               ) -> Iterator[pathlib.Path]:
  """The ``*.py``, ``*.txt`` and ``*.md`` files under ``root`` (sorted, or
  in directory order)."""
  paths = root.rglob('*')
  for path in sorted(paths) if ordered else paths:
    if path.suffix in ('.py', '.txt', '.md') and path.is_file():
      yield path


def text_bytes(text_dir: Optional[str], limit: int) -> int:
  """Bytes of text ``ByteText.from_directory`` can read from ``text_dir``,
  counted (from file sizes, in any order: a total) up to ``limit``."""
  total = 0
  for path in text_files(pathlib.Path(text_dir or default_text_dir()),
                         ordered=False):
    total += path.stat().st_size
    if total >= limit:
      return limit
  return total


class ByteText(Dataset):
  """Byte-level language modelling on a block of text.

  The last 10% of the bytes are held out for evaluation; batches are windows
  at offsets drawn from ``(seed, index)``. ``from_directory`` reads local text
  files; ``huggingface_text`` and ``tfds_text`` read optional datasets.
  """

  def __init__(self, text: bytes, seq_len: int, batch_size: int, seed: int,
               source: str = 'text'):
    self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
    data = np.frombuffer(text, np.uint8)
    if len(data) < min_text_bytes(seq_len):
      raise ValueError(f'{source} holds only {len(data)} bytes of text, too '
                       f'few for seq_len={seq_len}')
    split = int(0.9 * len(data))
    self.train_data, self.eval_data = data[:split], data[split:]
    self.info = DatasetInfo(task='lm', num_outputs=256, vocab_size=256,
                            input_shape=(seq_len,))

  @classmethod
  def from_directory(cls, text_dir: Optional[str], seq_len: int,
                     batch_size: int, max_bytes: int, seed: int) -> 'ByteText':
    """``*.py``, ``*.txt`` and ``*.md`` files of ``text_dir`` (default: the
    Python standard library's source) in sorted order, up to ``max_bytes``."""
    root = pathlib.Path(text_dir or default_text_dir())
    if not root.is_dir():
      raise FileNotFoundError(f'data.text_dir={str(root)!r} is not a directory')
    chunks, total = [], 0
    for path in text_files(root):
      chunks.append(path.read_bytes()[:max_bytes - total])
      total += len(chunks[-1])
      if total >= max_bytes:
        break
    return cls(b''.join(chunks), seq_len, batch_size, seed,
               source=f'data.text_dir={str(root)!r}')

  def _windows(self, data: np.ndarray, rng: np.random.Generator) -> Batch:
    starts = rng.integers(0, len(data) - self.seq_len - 1, self.batch_size)
    idx = starts[:, None] + np.arange(self.seq_len + 1)
    seq = data[idx].astype(np.int32)
    return {'inputs': seq[:, :-1], 'targets': seq[:, 1:]}

  def train_batch(self, index: int) -> Batch:
    return self._windows(self.train_data, _rng(self.seed, _TRAIN, index))

  def eval_batch(self, index: int) -> Batch:
    return self._windows(self.eval_data, _rng(self.seed, _EVAL, index))


def _import_optional(name: str, package: str):
  try:
    return importlib.import_module(package)
  except ImportError as e:
    raise ImportError(
        f'data.name={name!r} needs the optional package {package!r}: '
        'pip install -e ".[data]" (and download the dataset ahead of time '
        'when offline). The embedded datasets '
        '(markov, bytes, teacher_student, modular, digits) need nothing.') from e


def _record_text(record: Any) -> bytes:
  """The text of one example: its first string (or bytes) field."""
  values = record.values() if isinstance(record, dict) else [record]
  for value in values:
    if isinstance(value, bytes):
      return value
    if isinstance(value, str):
      return value.encode('utf-8')
  raise ValueError(f'no text field in the example {record!r:.200}')


def _collect_text(records, max_bytes: int) -> bytes:
  chunks, total = [], 0
  for record in records:
    chunks.append(_record_text(record)[:max_bytes - total])
    total += len(chunks[-1])
    if total >= max_bytes:
      break
  return b'\n'.join(chunks)


def huggingface_text(hf_name: Optional[str], seq_len: int, batch_size: int,
                     max_bytes: int, seed: int) -> ByteText:
  """Byte-level text of a Hugging Face dataset's train split (``[data]`` extra).

  Offline, ``datasets`` reads its local cache (``HF_DATASETS_OFFLINE=1``).
  """
  datasets = _import_optional('huggingface', 'datasets')
  if not hf_name:
    raise ValueError('data.hf_name must name the dataset, e.g. "tiny_shakespeare"')
  records = datasets.load_dataset(hf_name, split='train')
  return ByteText(_collect_text(records, max_bytes), seq_len, batch_size, seed,
                  source=f'data.hf_name={hf_name!r}')


def tfds_text(hf_name: Optional[str], seq_len: int, batch_size: int,
              max_bytes: int, seed: int) -> ByteText:
  """Byte-level text of a TFDS dataset's train split (``[data]`` extra).

  TFDS is read once, at start, into NumPy; the training path never runs
  TensorFlow.
  """
  tfds = _import_optional('tfds', 'tensorflow_datasets')
  if not hf_name:
    raise ValueError('data.hf_name must name the dataset, e.g. "lm1b"')
  records = tfds.as_numpy(tfds.load(hf_name, split='train'))
  return ByteText(_collect_text(records, max_bytes), seq_len, batch_size, seed,
                  source=f'data.hf_name={hf_name!r}')
