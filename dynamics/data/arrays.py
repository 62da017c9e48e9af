"""Finite datasets held in memory, and scikit-learn's bundled digits."""

import dataclasses
from typing import Optional

import numpy as np

from dynamics.data.base import _STRUCTURE, _TRAIN, Batch, Dataset, DatasetInfo, _rng


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
