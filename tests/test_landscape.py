"""Tests for analysis/landscape: barriers, slices, weight matching, soups."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import landscape
from analysis.landscape import matching as align_lib
from analysis.landscape import interpolation, soups
from dynamics import checkpoint, models, runs

jax.config.update('jax_numpy_rank_promotion', 'raise')


# -- barrier -------------------------------------------------------------------

def concave(p, batch):
  """1 - |theta|^2: along a line, L(alpha) - chord = alpha (1 - alpha) |a-b|^2."""
  del batch
  return 1.0 - jnp.sum(p['w'] ** 2)


def test_barrier_of_a_hand_built_quadratic_pair():
  a, b = {'w': jnp.array([1.0, 0.0])}, {'w': jnp.array([-1.0, 2.0])}
  alphas = [-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
  r = landscape.interpolate_params(concave, a, b, alphas, [jnp.zeros(1)],
                                   chunk_size=3)
  dist2 = 8.0  # |a - b|^2
  line = lambda t: (1 - t) * 0.0 + t * (-4.0)  # L(a) = 0, L(b) = -4.
  expected = [line(t) + t * (1 - t) * dist2 for t in alphas]
  np.testing.assert_allclose(r['loss'], expected, rtol=1e-6, atol=1e-6)
  assert r['barrier'] == pytest.approx(dist2 / 4, rel=1e-6)  # At alpha = 1/2.
  # A convex pair has no barrier; points outside [0, 1] never count.
  assert landscape.barrier([-1, 0, 0.5, 1, 2], [9, 1, 0.5, 1, 9]) == 0.0


def test_barrier_needs_both_endpoints_and_a_grid():
  with pytest.raises(ValueError, match='^alphas: the grid must contain both'):
    landscape.barrier([0.0, 0.5], [1.0, 2.0])
  with pytest.raises(ValueError, match='^alphas: the interpolation grid is '
                     'empty$'):
    landscape.interpolate_params(concave, {'w': jnp.zeros(1)},
                                 {'w': jnp.zeros(1)}, [], [jnp.zeros(1)])
  with pytest.raises(ValueError, match='^params_b: the two models have'):
    landscape.interpolate_params(concave, {'w': jnp.zeros(1)},
                                 {'w': jnp.zeros(2)}, [0.0], [jnp.zeros(1)])


# -- slices --------------------------------------------------------------------

def test_filter_normalization_matches_every_filter_norm():
  key = jax.random.PRNGKey(0)
  k = jax.random.split(key, 5)
  params = {'conv_0': {'kernel': jax.random.normal(k[0], (3, 3, 2, 4)),
                       'bias': jnp.ones(4)},
            'dense_0': {'kernel': jax.random.normal(k[1], (5, 3))},
            'block_0': {'attn': {'qkv': {'kernel': jax.random.normal(
                k[2], (6, 3, 2, 4))}}},
            'embed': {'embedding': jax.random.normal(k[3], (7, 6))}}
  d = landscape.random_direction(k[4], params)
  axes = {'conv_0': (0, 1, 2), 'dense_0': (0,), 'qkv': (0,), 'embed': (1,)}
  pairs = [('conv_0', d['conv_0']['kernel'], params['conv_0']['kernel']),
           ('dense_0', d['dense_0']['kernel'], params['dense_0']['kernel']),
           ('qkv', d['block_0']['attn']['qkv']['kernel'],
            params['block_0']['attn']['qkv']['kernel']),
           ('embed', d['embed']['embedding'], params['embed']['embedding'])]
  for name, dk, pk in pairs:
    dn = np.sqrt(np.sum(np.asarray(dk) ** 2, axis=axes[name]))
    pn = np.sqrt(np.sum(np.asarray(pk) ** 2, axis=axes[name]))
    assert dn.size > 1
    np.testing.assert_allclose(dn, pn, rtol=1e-5, err_msg=name)
  np.testing.assert_array_equal(d['conv_0']['bias'], 0.0)  # 1-D: ignored.


def test_slices_are_the_loss_at_each_grid_point():
  params = {'w': jnp.array([1.0, 2.0])}
  d1, d2 = {'w': jnp.array([1.0, 0.0])}, {'w': jnp.array([0.0, 1.0])}
  xs, ys = [-1.0, 0.0, 0.5], [0.0, 2.0]
  loss = lambda p, b: jnp.sum(p['w'] ** 2) + b
  s = landscape.slice_2d(loss, params, d1, d2, xs, ys,
                         [jnp.float32(0.0), jnp.float32(2.0)], chunk_size=4)
  expected = [[(1 + x) ** 2 + (2 + y) ** 2 + 1.0 for x in xs] for y in ys]
  np.testing.assert_allclose(s['loss'], expected, rtol=1e-6)
  one = landscape.slice_1d(loss, params, d1, xs, [jnp.float32(0.0)])
  np.testing.assert_allclose(one['loss'], [(1 + x) ** 2 + 4 for x in xs])
  with pytest.raises(ValueError, match='^ys: need a non-empty grid'):
    landscape.slice_2d(loss, params, d1, d2, xs, [], [jnp.float32(0.0)])


def test_plane_of_three_puts_them_at_the_corners():
  t0, t1, t2 = (jnp.array([0.0, 0.0]), jnp.array([3.0, 0.0]),
                jnp.array([1.0, 2.0]))
  c, d1, d2 = landscape.plane_of_three(t0, t1, t2)
  np.testing.assert_allclose(c + d1, t1)
  np.testing.assert_allclose(c + d2, t2)
  _, u1, u2, coords = landscape.orthonormal_plane(t0, t1, t2)
  np.testing.assert_allclose(coords, [[0, 0], [3, 0], [1, 2]], atol=1e-6)
  np.testing.assert_allclose(jnp.dot(u1, u2), 0.0, atol=1e-7)


# -- weight matching -------------------------------------------------------------

def _init(model, x):
  """``(variables, seed -> variables)``: every parameter (biases and norm
  scales included) perturbed, so no permutation rule is hidden by a zero."""

  def init(seed):
    v = model.init(jax.random.PRNGKey(seed), x, train=False)
    rng = np.random.RandomState(seed)
    return {**v, 'params': jax.tree.map(
        lambda p: p + 0.1 * rng.randn(*p.shape).astype(p.dtype), v['params'])}

  return init(0), init


FAMILIES = {
    'mlp': (models.MLP(hidden_sizes=(6, 5), num_outputs=3, norm='layernorm'),
            np.random.RandomState(0).randn(4, 7).astype(np.float32)),
    'cnn': (models.CNN(channels=(3, 4), num_outputs=3, norm='batchnorm'),
            np.random.RandomState(0).randn(2, 4, 4, 2).astype(np.float32)),
    'transformer': (models.Transformer(vocab_size=11, d_model=8, num_layers=2,
                                       num_heads=2, max_len=6,
                                       tie_embeddings=False),
                    np.random.RandomState(0).randint(0, 11, (2, 6))),
}


def _shuffle(params, seed):
  spec = align_lib.spec_for(params)
  rng = np.random.default_rng(seed)
  perms = {p: rng.permutation(n)
           for p, n in align_lib.perm_sizes(params, spec).items()}
  return spec, {p: np.roll(v, 1) if np.array_equal(v, np.arange(v.size))
                else v for p, v in perms.items()}


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_align_recovers_a_known_shuffle_and_keeps_the_function(family):
  model, x = FAMILIES[family]
  _, init = _init(model, x)
  va, vb = init(0), init(1)
  if family == 'cnn':  # Non-trivial running statistics.
    rng = np.random.RandomState(2)  # Means near 0: ReLUs stay alive.
    stats = jax.tree_util.tree_map_with_path(lambda path, s: jnp.asarray(
        (0.5 + rng.rand(*s.shape)) if 'var' in str(path)
        else 0.1 * rng.randn(*s.shape), s.dtype), va['batch_stats'])
    va, vb = {**va, 'batch_stats': stats}, {**vb, 'batch_stats': stats}
  spec, shuffle = _shuffle(va['params'], 3)
  shuffled = align_lib.permute(va['params'], spec, shuffle)
  assert not all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(
      jax.tree.leaves(shuffled), jax.tree.leaves(va['params'])))
  recovered = landscape.align(va['params'], shuffled)
  for u, v in zip(jax.tree.leaves(recovered), jax.tree.leaves(va['params'])):
    np.testing.assert_array_equal(u, v)  # Exactly: only indexing.
  # Every permutation of the spec is a symmetry (all of them moved at once),
  # and another network aligned to A computes exactly B's function.
  out_b = model.apply(vb, x, train=False)
  perms = landscape.weight_matching(va['params'], vb['params'])
  assert any(not np.array_equal(p, np.arange(p.size)) for p in perms.values())
  assert all(not np.array_equal(p, np.arange(p.size))
             for p in shuffle.values())
  for p in (shuffle, perms):
    moved = {k: align_lib.permute(v, spec, p) for k, v in vb.items()}
    np.testing.assert_allclose(model.apply(moved, x, train=False), out_b,
                               rtol=1e-5, atol=1e-6)


def test_weight_matching_single_layer_assignment_beats_all_24_permutations():
  model, x = models.MLP(hidden_sizes=(4,), num_outputs=3), np.ones((1, 5))
  _, init = _init(model, x.astype(np.float32))
  a, b = init(0)['params'], init(1)['params']
  spec = align_lib.spec_for(a)

  def similarity(perm):
    pb = align_lib.permute(b, spec, {'P_0': np.asarray(perm)})
    return sum(float(np.sum(np.asarray(u, np.float64) * np.asarray(v)))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(pb)))

  scores = {p: similarity(p) for p in itertools.permutations(range(4))}
  found = tuple(int(i) for i in landscape.weight_matching(a, b)['P_0'])
  assert len(scores) == 24
  assert scores[found] == pytest.approx(max(scores.values()), abs=1e-9)
  assert scores[found] > min(scores.values()) + 1e-3


def test_align_refuses_an_unsupported_family_in_one_line():
  with pytest.raises(ValueError, match='^params: no permutation spec'):
    align_lib.spec_for({'stem': {'kernel': jnp.ones((3, 3, 1, 2))}})
  with pytest.raises(ValueError, match='^params_b: the two models'):
    landscape.weight_matching({'dense_0': {'kernel': jnp.ones((2, 3))}},
                              {'dense_0': {'kernel': jnp.ones((2, 4))}})


# -- merging ---------------------------------------------------------------------

def test_soups_of_identical_checkpoints_are_the_checkpoint():
  p = {'w': jnp.array([0.1, -2.0, 3.0]), 'b': jnp.array(0.7)}
  copies = [p, p, p]
  for merged in (landscape.uniform_soup(copies),
                 landscape.fisher_merge(copies, [jax.tree.map(jnp.abs, p)] * 3),
                 landscape.greedy_soup(copies, lambda q: 1.0)[0]):
    for u, v in zip(jax.tree.leaves(merged), jax.tree.leaves(p)):
      np.testing.assert_allclose(u, v, rtol=1e-6)


def test_greedy_soup_adds_only_what_helps():
  target = jnp.array([1.0, 1.0])
  loss = lambda q: float(jnp.sum((q - target) ** 2))
  ingredients = [jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]),
                 jnp.array([5.0, 5.0])]
  soup, kept, scores = soups.greedy_soup(ingredients, loss)
  assert kept == [0, 1] and scores == [1.0, 1.0, 32.0]
  np.testing.assert_allclose(soup, [0.5, 0.5])


def test_fisher_merge_weighs_each_parameter_by_its_fisher():
  merged = soups.fisher_merge([jnp.array([0.0, 4.0]), jnp.array([2.0, 0.0])],
                              [jnp.array([1.0, 0.0]), jnp.array([3.0, 0.0])],
                              weights=[0.5, 0.5])
  np.testing.assert_allclose(merged, [1.5, 2.0])  # Zero Fisher: plain mean.


# -- batch norm, runs ------------------------------------------------------------

class _BN(models.CNN.__bases__[0]):
  """A batch norm on the inputs alone: its statistics are the data's."""

  @__import__('flax').linen.compact
  def __call__(self, x, train=False):
    return __import__('flax').linen.BatchNorm(
        use_running_average=not train, momentum=0.9, name='norm_0')(x)


def test_recomputed_batch_stats_are_the_mean_batch_statistics():
  xs = [np.random.RandomState(i).randn(5, 3).astype(np.float32) * (i + 1)
        for i in range(3)]
  model = _BN()
  v = model.init(jax.random.PRNGKey(0), xs[0])
  state = interpolation.recompute_batch_stats(
      model, v.get('params', {}), {'batch_stats': v['batch_stats']},
      [{'inputs': x} for x in xs])
  s = state['batch_stats']['norm_0']
  np.testing.assert_allclose(s['mean'], np.mean([x.mean(0) for x in xs], 0),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(s['var'], np.mean([x.var(0) for x in xs], 0),
                             rtol=1e-5)


@pytest.fixture(scope='module')
def two_cnn_runs(tmp_path_factory):
  from configs import adamp  # pylint: disable=g-import-not-at-top
  made = []
  for seed in (0, 1):
    config = adamp.get_config('smoke')
    config.seed = seed
    workdir = str(tmp_path_factory.mktemp(f'cnn{seed}'))
    run = runs.Run.create(workdir, config)
    checkpoint.save(workdir, 5, run.init_state(), {'position': 5})
    made.append(runs.Run.open(workdir))
  return made


def test_interpolate_runs_with_batch_norm_and_bad_steps(two_cnn_runs):
  a, b = two_cnn_runs
  r = landscape.interpolate(a, 5, b, None, [0.0, 0.5, 1.0], num_batches=1)
  assert r['batch_norm'] and len(r['train']['loss']) == 3
  assert r['eval']['barrier'] >= 0.0 and 'accuracy' in r['eval']
  same = landscape.interpolate(a, 5, a, 5, [0.0, 1.0], num_batches=1)
  assert same['train']['loss'][0] == pytest.approx(same['train']['loss'][1])
  with pytest.raises(runs.RunNotFoundError, match='no checkpoint at step 7'):
    landscape.interpolate(a, 7, b, 5, [0.0, 1.0])


@pytest.fixture(scope='module')
def mlp_run(tmp_path_factory):
  """A recorded MLP run with checkpoints 2 and 4 (perturbed parameters)."""
  from configs import jacobian  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('mlp'))
  run = runs.Run.create(workdir, jacobian.get_config('smoke'))
  state = run.init_state()
  for step in (2, 4):
    rng = np.random.RandomState(step)
    params = jax.tree.map(lambda p: p + 0.05 * rng.randn(*p.shape).astype(
        p.dtype), state.params)
    checkpoint.save(workdir, step, state.replace(params=params),
                    {'position': step})
  return workdir


@pytest.mark.parametrize('method', ['uniform_soup', 'greedy_soup', 'fisher'])
def test_merge_command_methods_write_a_new_run(mlp_run, tmp_path, method):
  from experiments import merge  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / method)
  record = merge.merge_and_evaluate(mlp_run, window=4, interval=2,
                                    output=out, method=method)
  assert record['method'] == method and record['steps'] == [2, 4]
  assert runs.merge_source(out) == mlp_run
  merged = runs.Run.open(out).params(4)
  source = runs.Run.open(mlp_run)
  a, b = source.params(2), source.params(4)
  if method == 'uniform_soup':
    for m, u, v in zip(*(jax.tree.leaves(t) for t in (merged, a, b))):
      np.testing.assert_allclose(m, (u + v) / 2, rtol=1e-6, atol=1e-7)
  if method == 'greedy_soup':
    assert record['kept'][0] == int(np.argmin(record['held_out_loss']))
  assert np.isfinite(record['eval_loss'])
  with pytest.raises(ValueError, match='^--method=ties: must be one of'):
    merge.merge_and_evaluate(mlp_run, window=4, interval=2, method='ties')


# -- the command and the benchmark ---------------------------------------------

ROOT = __import__('os').path.dirname(__import__('os').path.dirname(
    __import__('os').path.abspath(__file__)))


def _command(*args):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def test_runs_of_different_shapes_and_bad_grids_fail_naming_the_flag(
    two_cnn_runs, mlp_run):
  from analysis.landscape import args  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='^other_workdir: the two models have '
                     'different parameter shapes'):
    landscape.interpolate(two_cnn_runs[0], 5, runs.Run.open(mlp_run), 2,
                          [0.0, 1.0])
  for text in ('', ',', '0:1:0', '0:1'):
    with pytest.raises(ValueError, match='^--alphas='):
      args.parse_grid(text, 'alphas')
  assert args.parse_grid('-1:1:5', 'grid') == [-1.0, -0.5, 0.0, 0.5, 1.0]


def test_command_slices_a_checkpoint_and_refuses_a_missing_step(mlp_run,
                                                                tmp_path):
  proc = _command('analysis.landscape', f'--workdir={mlp_run}',
                  '--mode=slice2d', '--grid=-1:1:3', '--num_batches=1',
                  f'--out={tmp_path}')
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = __import__('json').load(open(tmp_path / 'slice2d_4_random.json'))
  assert np.asarray(report['loss']).shape == (3, 3)
  assert (tmp_path / 'slice2d_4_random.png').stat().st_size > 0
  proc = _command('analysis.landscape', f'--workdir={mlp_run}',
                  '--steps=2,3', '--alphas=0:1:3')
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      f'Error: no checkpoint at step 3 in {mlp_run}; available steps: [2, 4]')


def test_bench_landscape_runs_at_a_toy_size(tmp_path):
  proc = _command('experiments.bench_landscape', '--smoke', '--size=2',
                  '--num_batches=1', f'--results={tmp_path}/b.json')
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = __import__('json').load(open(tmp_path / 'b.json'))
  assert result['points'] == 4 and result['seconds'] > 0


def test_plane_slice_passes_through_its_three_checkpoints(mlp_run):
  run = runs.Run.open(mlp_run)
  r = landscape.checkpoint_slice(run, [2, 4, 4], [0.0, 1.0], mode='slice2d',
                                 directions='plane', num_batches=1)
  batch = run.dataset.eval_batch(0)
  state = run.restore(2, ('model_state',))['model_state']
  loss = lambda step: float(run.loss_fn(state)(run.params(step), batch))
  assert r['loss'][0][0] == pytest.approx(loss(2), rel=1e-5)   # (0, 0)
  assert r['loss'][0][1] == pytest.approx(loss(4), rel=1e-5)   # (1, 0)
  assert r['loss'][1][0] == pytest.approx(loss(4), rel=1e-5)   # (0, 1)
  with pytest.raises(ValueError, match='^--directions=plane needs'):
    landscape.checkpoint_slice(run, [2, 4], [0.0], directions='plane')
