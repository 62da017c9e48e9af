"""Where a probe's batches come from: a fixed list, or a function of the run
(`held_out`, `training`), resolved once per run; and the check of a probe's
counts and periods (a positive integer, named in the error)."""

from typing import Any, Callable, List, Sequence, Union

from dynamics import runs
from dynamics.types import Batch

# Batches, or a function of the run that returns them.
BatchSource = Union[Sequence[Batch], Callable[[runs.Run], Sequence[Batch]]]


def held_out(num_batches: int) -> Callable[[runs.Run], List[Batch]]:
  """The run's fixed held-out probe batches (`dynamics.runs.Run.probe_batches`)."""
  check_count('num_batches', num_batches)
  return lambda run: run.probe_batches(num_batches)


def training(num_batches: int) -> Callable[[runs.Run], List[Batch]]:
  """The run's first training batches (for full-batch gradient descent, the
  whole training set, whose sharpness is what sits at :math:`2/\eta`)."""
  check_count('num_batches', num_batches)
  return lambda run: [run.dataset.train_batch(i) for i in range(num_batches)]


class BadCount(ValueError):
  """A count or period that is not a positive integer (names the argument)."""

  def __init__(self, name: str, value: Any):
    super().__init__(f'{name} must be a positive integer, got {value!r}')
    self.name, self.value = name, value


def check_count(name: str, value: Any) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise BadCount(name, value)


class Batches:
  """A batch source, resolved once per run."""

  def __init__(self, source: BatchSource):
    self._source, self._run, self._batches = source, None, None
    if not callable(source):
      self._batches = list(source)
      if not self._batches:
        raise ValueError('batches is empty')

  def __call__(self, run: runs.Run) -> List[Batch]:
    if callable(self._source) and run is not self._run:
      self._run, self._batches = run, list(self._source(run))
    return self._batches
