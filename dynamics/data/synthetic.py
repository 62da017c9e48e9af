"""Data the package makes: a Markov language, a teacher network, modular arithmetic."""

import numpy as np

from dynamics.data.arrays import ArrayDataset
from dynamics.data.base import (_EVAL, _STRUCTURE, _TRAIN, Batch, Dataset,
                                DatasetInfo, _rng)


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
