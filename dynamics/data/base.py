"""What every dataset is: a pure function of ``(seed, index)`` to a batch."""

import dataclasses
from typing import Optional, Tuple

import numpy as np

from dynamics.types import Batch

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

  def train_slice(self, index: int, part: int, num_parts: int) -> Batch:
    """Part ``part`` of ``num_parts`` contiguous parts of ``train_batch(index)``
    (``np.array_split``): a process's rows. Datasets that can read only
    those rows (token files) override it."""
    return {k: np.array_split(v, num_parts)[part]
            for k, v in self.train_batch(index).items()}


def _rng(seed: int, *keys: int) -> np.random.Generator:
  return np.random.default_rng([seed, *keys])
