"""Histograms of values (weights, gradients, updates) for the run's log.

A `Histogram` is a metric value like a float: a probe returns it under a
name, `dynamics.metrics.MetricWriter` keeps it in the run's histogram file
(JSON lines, the source of truth) and writes it to TensorBoard as a
histogram summary (the ``histograms`` plugin's ``[k, 3]`` tensor of left
edge, right edge and count per bucket) with the ``tensorboard`` package's
event writer -- no TensorFlow.
"""

from typing import Any, Dict, List, NamedTuple

import numpy as np


class Histogram(NamedTuple):
  """Counts of values in equal-width buckets between their min and max.

  Attributes:
    edges: ``k + 1`` bucket edges, ``edges[0]`` the smallest value and
      ``edges[-1]`` the largest.
    counts: ``k`` counts (the last bucket includes its right edge); their
      sum is the number of values.
  """
  edges: List[float]
  counts: List[int]

  def to_json(self) -> Dict[str, Any]:
    return {'edges': list(self.edges), 'counts': list(self.counts)}

  @classmethod
  def from_json(cls, record: Dict[str, Any]) -> 'Histogram':
    return cls([float(e) for e in record['edges']],
               [int(c) for c in record['counts']])


def histogram(values: Any, num_buckets: int = 30) -> Histogram:
  """The `Histogram` of ``values`` (any array, flattened; float64 edges).

  All-equal values make one bucket ``[v, v]``.

  Example:
    >>> histogram([0., 1., 1., 3.], num_buckets=3)
    Histogram(edges=[0.0, 1.0, 2.0, 3.0], counts=[1, 2, 1])
  """
  x = np.asarray(values, np.float64).ravel()
  if x.size == 0:
    raise ValueError('histogram of no values')
  lo, hi = float(x.min()), float(x.max())
  if lo == hi:
    return Histogram([lo, hi], [int(x.size)])
  counts, edges = np.histogram(x, bins=int(num_buckets), range=(lo, hi))
  edges[0], edges[-1] = lo, hi  # Exactly the extremes.
  return Histogram([float(e) for e in edges], [int(c) for c in counts])


class TensorBoardHistograms:
  """Writes histogram summaries to an event file of ``directory`` (beside
  the scalars' file; TensorBoard reads every event file of a directory)."""

  def __init__(self, directory: str):
    from tensorboard.summary.writer import event_file_writer  # pylint: disable=g-import-not-at-top
    self._writer = event_file_writer.EventFileWriter(
        directory, filename_suffix='.histograms')

  def add(self, tag: str, hist: Histogram, step: int) -> None:
    """One histogram summary (plugin ``histograms``) at ``step``."""
    import time  # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
    edges = np.asarray(hist.edges, np.float64)
    buckets = np.stack([edges[:-1], edges[1:],
                        np.asarray(hist.counts, np.float64)], axis=1)
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name='histograms'),
        data_class=summary_pb2.DataClass.DATA_CLASS_TENSOR)
    event = event_pb2.Event(wall_time=time.time(), step=int(step))
    event.summary.value.add(tag=tag, metadata=metadata,
                            tensor=tensor_util.make_tensor_proto(buckets))
    self._writer.add_event(event)

  def close(self) -> None:
    self._writer.close()
