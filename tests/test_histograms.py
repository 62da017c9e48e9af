"""Weight / gradient / update histograms in TensorBoard
(``config.analysis.histograms_every``; `analysis.histogram_probe`,
`dynamics.histograms`), read back from the event files."""

import glob
import json
import os

import jax
import numpy as np
import pytest

from analysis import probes
from analysis.histogram_probe import HistogramProbe, layer_histograms
from dynamics import histograms, train
from dynamics.runs import Run

jax.config.update('jax_numpy_rank_promotion', 'raise')


def test_histogram_counts_every_value_between_min_and_max():
  x = np.random.default_rng(0).normal(size=1000)
  h = histograms.histogram(x, num_buckets=7)
  assert sum(h.counts) == 1000 and len(h.counts) == 7
  assert (h.edges[0], h.edges[-1]) == (x.min(), x.max())
  np.testing.assert_array_equal(h.counts, np.histogram(x, 7)[0])
  assert histograms.histogram(np.full(5, 2.0)) == ([2.0, 2.0], [5])


def _tensorboard_histograms(workdir):
  """``{(tag, step): [k, 3] buckets}`` of every histogram event."""
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.util import tensor_util
  out = {}
  for path in glob.glob(os.path.join(workdir, 'tensorboard', '*')):
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == 'histograms':
          out[value.tag, event.step] = tensor_util.make_ndarray(value.tensor)
  return out


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  from tests.test_probes import tiny_config
  config = tiny_config()
  config.num_steps, config.checkpoint.every_steps = 4, 2
  config.analysis.ntk_every = config.analysis.sharpness_every = None
  config.analysis.histograms_every = 2
  built = probes.from_config(config)
  assert [p.name for p in built] == ['histograms']
  workdir = str(tmp_path_factory.mktemp('hist'))
  train.train_and_evaluate(config, workdir, probes=built)
  return workdir


def test_tensorboard_histograms_count_the_layer_and_span_its_weights(trained):
  run = Run.open(trained)
  params = run.params(4)
  events = _tensorboard_histograms(trained)
  names = {tag for tag, _ in events}
  layers = set(layer_histograms(params))
  assert {f'histograms/{kind}/{layer}' for kind in
          ('weights', 'gradients', 'updates') for layer in layers} == names
  assert {step for _, step in events} == {0, 2, 4}
  for layer in layers:  # Weights at step 4 are the final checkpoint's.
    leaves = [np.ravel(x) for path, x in jax.tree_util.tree_flatten_with_path(
        params)[0] if jax.tree_util.keystr(path, simple=True,
                                           separator='/').startswith(layer)]
    values = np.concatenate(leaves)
    buckets = events[f'histograms/weights/{layer}', 4]
    assert buckets[:, 2].sum() == values.size
    assert buckets[0, 0] == values.min() and buckets[-1, 1] == values.max()
  # Kept out of metrics.jsonl, kept in histograms.jsonl.
  with open(os.path.join(trained, 'metrics.jsonl')) as f:
    assert not any('histograms/' in k for r in map(json.loads, f) for k in r)
  with open(os.path.join(trained, 'histograms.jsonl')) as f:
    assert [r['step'] for r in map(json.loads, f)] == [0, 2, 4]


def test_the_gradient_histogram_is_the_gradient_of_the_training_batch(trained):
  run = Run.open(trained)
  state = run.state(2)
  probe = HistogramProbe(2, update_fn=lambda s, r: s.params)
  out = probe(state, run)
  grad = jax.grad(run.loss_fn(state.model_state))(
      state.params, run.dataset.train_batch(2))
  want = layer_histograms(grad)
  for layer, h in want.items():
    got = out[f'histograms/gradients/{layer}']
    np.testing.assert_allclose(got.edges, h.edges, rtol=1e-6,
                               atol=1e-6 * np.abs(h.edges).max())
    assert got.counts == h.counts


def test_the_gradient_uses_the_current_model_state():
  """The loss is in inference mode: a model state (batch-norm statistics)
  that moves between calls must be the one at the probed step."""
  import types
  import jax.numpy as jnp
  loss = lambda ms: lambda p, b: ms['s'] * jnp.sum(p['dense']['kernel'] ** 2)
  run = types.SimpleNamespace(
      loss_fn=loss,
      dataset=types.SimpleNamespace(train_batch=lambda step: {'x': np.ones(2)}))
  params = {'dense': {'kernel': jnp.arange(1.0, 5.0)}}
  probe = HistogramProbe(1, update_fn=lambda s, r: s.params)
  for scale in (1.0, 3.0):
    state = types.SimpleNamespace(params=params, step=0,
                                  model_state={'s': jnp.asarray(scale)})
    got = probe(state, run)['histograms/gradients/dense']
    assert (got.edges[0], got.edges[-1]) == (2 * scale, 8 * scale)


def test_a_resume_drops_later_histograms_and_rewrites_tensorboard(tmp_path):
  """Like the scalars: lines after the resume step are dropped from
  histograms.jsonl, and the event files are rebuilt from what is kept."""
  from dynamics.metrics import MetricWriter
  paths = (str(tmp_path / 'metrics.jsonl'), str(tmp_path / 'tensorboard'),
           str(tmp_path / 'histograms.jsonl'))
  with MetricWriter(paths[0], None, True, *paths[1:]) as writer:
    for step in (0, 2, 4):
      writer.write(step, {'loss': 1.0 / (step + 1), 'histograms/w':
                          histograms.histogram(np.arange(step + 3.0), 2)})
  with MetricWriter(paths[0], 2, True, *paths[1:]):
    pass
  with open(paths[2]) as f:
    kept = [json.loads(line) for line in f]
  assert [r['step'] for r in kept] == [0, 2]
  assert kept[1]['histograms/w'] == {'edges': [0.0, 2.0, 4.0],
                                     'counts': [2, 3]}
  events = _tensorboard_histograms(str(tmp_path))
  assert sorted(events) == [('histograms/w', 0), ('histograms/w', 2)]
  np.testing.assert_array_equal(events['histograms/w', 2],
                                [[0, 2, 2], [2, 4, 3]])
