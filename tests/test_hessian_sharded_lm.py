"""``python -m analysis.hessian --kind=ggn --blocks=layers`` of a tiny LLaMA
(`configs/llama_c4.py:smoke`, float32) on 8 host devices with ``--fsdp=8``:
the per-layer table equals the one-device table to round-off.

One subprocess (``XLA_FLAGS=--xla_force_host_platform_device_count=8``)
trains the run, runs the command twice (one device; FSDP over 8) and prints
one JSON line; the tests read it.
"""

import functools
import json
import os
import sys

import numpy as np

import host_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ('top_eigenvalue', 'trace', 'frobenius')


def _child():
  import tempfile
  import time
  from absl import flags
  from analysis.hessian import __main__ as command
  from analysis import hessian
  from analysis.hessian import checkpoints
  from dynamics import cli
  from configs import llama_c4
  from dynamics import data, runs, train
  from experiments import prepare_text

  start = time.perf_counter()
  tmp = tempfile.mkdtemp()
  tokens = os.path.join(tmp, 'tokens')
  prepare_text.prepare(prepare_text.input_files(os.path.join(
      data.default_text_dir(), 'json')), tokens, 'bytes', eval_tokens=4000,
      shard_tokens=20_000, progress=False)
  c = llama_c4.get_config('smoke')
  c.data.path, c.checkpoint.async_save = tokens, False
  c.model.dtype = 'float32'          # Round-off of float32, not bfloat16.
  c.loss.vocab_chunk = 64            # The GGN's softmax by chunks, too.
  c.model.num_layers = 1             # Fewer rows: a faster test.
  c.num_steps, c.checkpoint.every_steps = 2, 2
  workdir = os.path.join(tmp, 'run')
  train.train_and_evaluate(c, workdir)

  tables, reports, seconds = {}, {}, {'train': time.perf_counter() - start}
  for name, extra in (('one', []), ('fsdp8', ['--fsdp=8'])):
    out = os.path.join(tmp, name)
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['hessian', f'--workdir={workdir}', '--kind=ggn',
                 '--blocks=layers', '--block_probes=2', '--num_batches=1', '--tol=1e-3',
                 '--nocompilation_cache', f'--out={out}', *extra])
    begin = time.perf_counter()
    command.main([])
    seconds[name] = time.perf_counter() - begin
    (path,) = [f for f in os.listdir(out) if f.endswith('.json')]
    with open(os.path.join(out, path)) as f:
      report = json.load(f)
    tables[name] = {row['name']: [row[k] for k in FIELDS]
                    for row in report['blocks'] + [report['whole']]}
    reports[name] = {k: report[k] for k in ('devices', 'fsdp', 'vocab_chunk',
                                            'product_memory')}
  # Where the command put the parameters with --fsdp=8.
  run = runs.Run.open(workdir)
  refusals = []  # User errors, before anything is restored or compiled.
  for bad in (['--fsdp=3'], ['--vocab_chunk=8', '--kind=hessian'],
              ['--vocab_chunk=8', '--kind=ggn', '--k=1']):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['hessian', f'--workdir={workdir}', *bad])
    try:
      command._check(run, hessian)
      refusals.append(None)
    except cli.UserError as e:
      refusals.append(str(e))
  _, params, _, batches = checkpoints._checkpoint(run, None, 1, fsdp=8)
  kernel = params['block_0']['mlp']['fc_in']['kernel']
  return {'refusals': refusals, 'seconds': seconds, 'tables': tables, 'reports': reports,
          'kernel_spec': [str(s) for s in kernel.sharding.spec],
          'batch_devices': len(batches[0]['inputs'].sharding.device_set)}


@functools.lru_cache(maxsize=None)
def _results():
  return host_devices.child_results(__file__, 8)


def test_sharded_layer_table_equals_the_one_device_table():
  r = _results()
  one, eight = r['tables']['one'], r['tables']['fsdp8']
  assert set(one) == set(eight) and len(one) >= 4, one
  for name in one:
    np.testing.assert_allclose(eight[name], one[name], rtol=2e-5,
                               err_msg=name)


def test_the_products_ran_sharded_and_chunked_with_memory_reported():
  r = _results()
  assert r['reports']['one']['devices'] == 1
  assert r['reports']['fsdp8']['devices'] == 8
  assert r['reports']['fsdp8']['fsdp'] == 8
  assert 'fsdp' in r['kernel_spec'], r['kernel_spec']
  assert r['batch_devices'] == 8
  for report in r['reports'].values():
    assert report['vocab_chunk'] == 64
    assert report['product_memory']['peak_bytes'] > 0


def test_bad_mesh_or_chunk_is_refused_naming_the_flag():
  fsdp, kind, fine = _results()['refusals']
  assert fsdp == '--fsdp=3: 3 shards do not divide the 8 devices', fsdp
  assert kind.startswith('--vocab_chunk=8: applies to --kind=ggn only'), kind
  assert fine is None


if __name__ == '__main__' and sys.argv[1:] == ['--child']:
  sys.path.insert(0, ROOT)
  print('RESULT ' + json.dumps(_child()), flush=True)
