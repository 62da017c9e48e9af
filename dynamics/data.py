"""Embedded datasets and deterministic, resumable batch iterators.

Every dataset is a pure function of ``(seed, index)``: ``train_batch(i)`` is the
i-th training batch, always the same, so a run's data position is one integer
(checkpointed with the model) and any step can be replayed. Batches are dicts of
NumPy arrays ``{'inputs': ..., 'targets': ...}``; the training loop places them
on devices.

Datasets that need no download:
  * ``markov``: a synthetic Markov (bigram) language with tunable entropy.
  * ``bytes``: byte-level text from a local directory (default: the Python
    standard library's own source files).
  * ``teacher_student``: regression on the outputs of a random teacher MLP.
  * ``modular``: ``(a op b) mod p`` for grokking studies.
  * ``digits``: scikit-learn's bundled 8x8 digits (needs scikit-learn).
Optional loaders (``tfds``, ``huggingface``) need the ``[data]`` extra.
"""

import dataclasses
import importlib
import pathlib
import sysconfig
from typing import Any, Dict, Optional, Tuple

import numpy as np

Batch = Dict[str, np.ndarray]
DATASETS = ('markov', 'bytes', 'teacher_student', 'modular', 'digits', 'tfds',
            'huggingface')
_TRAIN, _EVAL, _STRUCTURE = 1, 2, 0xDA7A


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model and loss need to know about a dataset.

  Attributes:
    task: 'lm' (next-token prediction), 'classification' or 'regression'.
    num_outputs: classes, vocabulary size or regression outputs.
    vocab_size: token vocabulary for 'lm' data, else None.
    input_shape: shape of one example's inputs.
    num_train: training-set size for finite datasets, None for streams.
    loss_floor: the lowest achievable expected loss, where known (the
      entropy rate of the Markov language), else None.
  """
  task: str
  num_outputs: int
  vocab_size: Optional[int]
  input_shape: Tuple[int, ...]
  num_train: Optional[int] = None
  loss_floor: Optional[float] = None


class Dataset:
  """Base class: subclasses implement ``train_batch`` and ``eval_batch``."""
  info: DatasetInfo
  batch_size: int

  def train_batch(self, index: int) -> Batch:
    raise NotImplementedError

  def eval_batch(self, index: int) -> Batch:
    raise NotImplementedError


def _rng(seed: int, *keys: int) -> np.random.Generator:
  return np.random.default_rng([seed, *keys])


class MarkovLanguage(Dataset):
  """Sequences from a random first-order Markov chain over ``vocab_size`` states.

  Transition rows are ``softmax(z / temperature)`` with ``z ~ N(0, 1)``; a lower
  temperature concentrates each row and lowers the entropy rate, which is the
  loss an ideal model reaches (``info.loss_floor``, in nats). The language is
  fixed (drawn from a constant seed) so that runs with different
  ``config.seed`` study the same task; the seed varies the sampled sequences.
  """

  def __init__(self, vocab_size: int, seq_len: int, batch_size: int,
               temperature: float, seed: int):
    self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
    logits = _rng(0, _STRUCTURE).standard_normal((vocab_size, vocab_size))
    logits = logits / temperature
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    self.transition = probs / probs.sum(axis=1, keepdims=True)
    self._cdf = np.cumsum(self.transition, axis=1)
    # Stationary distribution: left eigenvector for eigenvalue 1.
    vals, vecs = np.linalg.eig(self.transition.T)
    pi = np.real(vecs[:, np.argmin(np.abs(vals - 1.0))])
    self.stationary = pi / pi.sum()
    row_entropy = -np.sum(self.transition * np.log(self.transition), axis=1)
    self.info = DatasetInfo(
        task='lm', num_outputs=vocab_size, vocab_size=vocab_size,
        input_shape=(seq_len,),
        loss_floor=float(np.dot(self.stationary, row_entropy)))

  def _sample(self, rng: np.random.Generator) -> Batch:
    b, t = self.batch_size, self.seq_len
    seq = np.empty((b, t + 1), np.int32)
    seq[:, 0] = rng.choice(len(self.stationary), size=b, p=self.stationary)
    uniform = rng.random((b, t))
    last = len(self.stationary) - 1
    for i in range(t):
      row = self._cdf[seq[:, i]]
      seq[:, i + 1] = np.minimum((row < uniform[:, i, None]).sum(1), last)
    return {'inputs': seq[:, :-1], 'targets': seq[:, 1:]}

  def train_batch(self, index: int) -> Batch:
    return self._sample(_rng(self.seed, _TRAIN, index))

  def eval_batch(self, index: int) -> Batch:
    return self._sample(_rng(self.seed, _EVAL, index))


def default_text_dir() -> str:
  """The Python standard library's source directory (always present)."""
  return sysconfig.get_paths()['stdlib']


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
    if len(data) < 20 * (seq_len + 1):
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
    for path in sorted(root.rglob('*')):
      if path.suffix not in ('.py', '.txt', '.md') or not path.is_file():
        continue
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


class ArrayDataset(Dataset):
  """A finite dataset held in memory, batched epoch by epoch.

  Step ``i`` belongs to epoch ``i // steps_per_epoch``, whose order is a
  permutation drawn from ``(seed, epoch)`` (the remainder is dropped). When
  ``batch_size >= num_train`` every batch is the whole training set in its
  original order: full-batch gradient descent.
  """

  def __init__(self, train: Batch, eval_: Batch, batch_size: int, seed: int,
               info: DatasetInfo):
    self.train, self.eval, self.batch_size, self.seed = train, eval_, batch_size, seed
    self.num_train = len(train['targets'])
    self.info = dataclasses.replace(info, num_train=self.num_train)

  def full_batch(self) -> Batch:
    return dict(self.train)

  def train_batch(self, index: int) -> Batch:
    n, b = self.num_train, self.batch_size
    if b >= n:
      return self.full_batch()
    steps_per_epoch = n // b
    epoch, pos = divmod(index, steps_per_epoch)
    perm = _rng(self.seed, _TRAIN, epoch).permutation(n)
    idx = perm[pos * b:(pos + 1) * b]
    return {k: v[idx] for k, v in self.train.items()}

  def eval_batch(self, index: int) -> Batch:
    n = len(self.eval['targets'])
    b = min(self.batch_size, n)
    idx = (np.arange(b) + index * b) % n
    return {k: v[idx] for k, v in self.eval.items()}


def teacher_student(input_dim: int, teacher_width: int, output_dim: int,
                    num_train: int, noise_std: float, batch_size: int,
                    seed: int) -> ArrayDataset:
  """Regression on a fixed random one-hidden-layer tanh teacher."""
  rng = _rng(0, _STRUCTURE)
  w1 = rng.standard_normal((input_dim, teacher_width)) / np.sqrt(input_dim)
  w2 = rng.standard_normal((teacher_width, output_dim)) / np.sqrt(teacher_width)

  def make(key):
    r = _rng(seed, key)
    x = r.standard_normal((num_train, input_dim)).astype(np.float32)
    y = np.tanh(x @ w1) @ w2 + noise_std * r.standard_normal((num_train, output_dim))
    return {'inputs': x, 'targets': y.astype(np.float32)}

  info = DatasetInfo(task='regression', num_outputs=output_dim,
                     vocab_size=None, input_shape=(input_dim,))
  return ArrayDataset(make(_TRAIN), make(_EVAL), batch_size, seed, info)


MODULAR_OPS = ('add', 'sub', 'mul', 'div')


def modular_arithmetic(modulus: int, operation: str, train_fraction: float,
                       batch_size: int, seed: int) -> ArrayDataset:
  """All pairs ``(a, b)`` labelled ``(a op b) mod p``, as one-hot inputs.

  Inputs are the concatenated one-hot codes of ``a`` and ``b`` (length ``2p``);
  ``train_fraction`` of the pairs (a seeded split) are for training, the rest
  for evaluation: the classic grokking setup (Power et al., 2022).
  """
  p = modulus
  a, b = np.meshgrid(np.arange(p), np.arange(p), indexing='ij')
  a, b = a.ravel(), b.ravel()
  if operation == 'add':
    y = (a + b) % p
  elif operation == 'sub':
    y = (a - b) % p
  elif operation == 'mul':
    y = (a * b) % p
  elif operation == 'div':
    keep = b != 0
    a, b = a[keep], b[keep]
    y = (a * pow_mod_inverse(b, p)) % p
  else:
    raise ValueError(f'data.operation must be one of {MODULAR_OPS}, got {operation!r}')
  x = np.concatenate([np.eye(p, dtype=np.float32)[a],
                      np.eye(p, dtype=np.float32)[b]], axis=1)
  perm = _rng(seed, _STRUCTURE).permutation(len(y))
  n_train = int(round(train_fraction * len(y)))
  tr, ev = perm[:n_train], perm[n_train:]
  info = DatasetInfo(task='classification', num_outputs=p, vocab_size=None,
                     input_shape=(2 * p,))
  return ArrayDataset({'inputs': x[tr], 'targets': y[tr].astype(np.int32)},
                      {'inputs': x[ev], 'targets': y[ev].astype(np.int32)},
                      batch_size, seed, info)


def pow_mod_inverse(b: np.ndarray, p: int) -> np.ndarray:
  """Modular inverse by Fermat's little theorem (``p`` prime)."""
  return np.array([pow(int(v), p - 2, p) for v in b])


def digits(batch_size: int, seed: int, white_noise: bool = False,
           num_eval: Optional[int] = None) -> ArrayDataset:
  """scikit-learn's bundled 8x8 digits (1,797 images, no download).

  Images are ``(8, 8, 1)`` in [0, 1]. With ``white_noise`` the images are
  replaced by uniform noise of the same shape (labels kept), the control
  used in training-Jacobian studies. ``num_eval`` images are held out (default
  20%: 1,437 / 360; the training-Jacobian reference uses 1,600 / 197).
  """
  try:
    from sklearn.datasets import load_digits
  except ImportError as e:
    raise ImportError('data.name=digits needs scikit-learn: '
                      'pip install scikit-learn') from e
  bunch = load_digits()
  x = (bunch.images / 16.0).astype(np.float32)[..., None]
  y = bunch.target.astype(np.int32)
  if white_noise:
    x = _rng(0, _STRUCTURE, 1).random(x.shape).astype(np.float32)
  perm = _rng(0, _STRUCTURE).permutation(len(y))
  if num_eval is None:
    n_train = int(0.8 * len(y))
  elif not 0 < num_eval < len(y):
    raise ValueError(f'data.num_eval must be in (0, {len(y)}), got {num_eval}')
  else:
    n_train = len(y) - num_eval
  tr, ev = perm[:n_train], perm[n_train:]
  info = DatasetInfo(task='classification', num_outputs=10, vocab_size=None,
                     input_shape=(8, 8, 1))
  return ArrayDataset({'inputs': x[tr], 'targets': y[tr]},
                      {'inputs': x[ev], 'targets': y[ev]}, batch_size, seed, info)


def _import_optional(name: str, package: str):
  try:
    return importlib.import_module(package)
  except ImportError as e:
    raise ImportError(
        f'data.name={name!r} needs the optional package {package!r}: '
        'pip install -e ".[data]" (and download the dataset ahead of time '
        'when offline). The embedded datasets '
        f'{DATASETS[:5]} need nothing.') from e


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


def get_dataset(config: Any) -> Dataset:
  """The dataset named by ``config.data.name``, seeded by ``config.seed``."""
  d, seed = config.data, config.seed
  if d.name == 'markov':
    return MarkovLanguage(d.vocab_size, d.seq_len, d.batch_size, d.temperature, seed)
  if d.name == 'bytes':
    return ByteText.from_directory(d.text_dir, d.seq_len, d.batch_size,
                                   d.max_bytes, seed)
  if d.name == 'teacher_student':
    return teacher_student(d.input_dim, d.teacher_width, d.output_dim,
                           d.num_train, d.noise_std, d.batch_size, seed)
  if d.name == 'modular':
    return modular_arithmetic(d.modulus, d.operation, d.train_fraction,
                              d.batch_size, seed)
  if d.name == 'digits':
    return digits(d.batch_size, seed, d.white_noise, d.num_eval)
  if d.name == 'tfds':
    return tfds_text(d.hf_name, d.seq_len, d.batch_size, d.max_bytes, seed)
  if d.name == 'huggingface':
    return huggingface_text(d.hf_name, d.seq_len, d.batch_size, d.max_bytes,
                            seed)
  raise ValueError(f'data.name must be one of {DATASETS}, got {d.name!r}')


class DataIterator:
  """Iterates ``dataset.train_batch(position)``; the position is its whole state.

  In a multi-process run each process keeps only its slice of the global
  batch (``process_index`` of ``process_count`` equal slices), so all processes
  together see exactly the batches of a single-process run.
  """

  def __init__(self, dataset: Dataset, position: int = 0,
               process_index: int = 0, process_count: int = 1):
    self.dataset, self.position = dataset, position
    self.process_index, self.process_count = process_index, process_count

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    batch = self.dataset.train_batch(self.position)
    self.position += 1
    if self.process_count == 1:
      return batch
    return {k: np.array_split(v, self.process_count)[self.process_index]
            for k, v in batch.items()}

  def state(self) -> Dict[str, int]:
    return {'position': self.position}

  def restore(self, state: Dict[str, int]) -> None:
    self.position = int(state['position'])
