"""The benchmark commands run end to end at toy sizes (figures not asserted:
speed is measured by the benchmarks themselves, never by timed tests)."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(*args):
  proc = subprocess.run([sys.executable, '-m', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  return proc.stdout


def test_bench_step_prints_the_ratio_to_a_hand_written_step():
  out = _bench('experiments.bench_step', '--steps=2', '--repeats=1')
  ratio = re.search(r'ratio train_step / baseline: ([\d.]+)', out)
  assert ratio and float(ratio.group(1)) > 0, out
  assert 'GFLOP/s achieved' in out


def test_bench_data_prints_the_reader_against_training(tmp_path):
  out = _bench('experiments.bench_data', '--tokens=200000', '--batches=3',
               '--train_steps=2', '--batch_size=8', '--seq_len=32',
               '--processes=2', f'--results={tmp_path}/data.json')
  assert re.search(r'the reader is [\d,.]+x faster', out), out
  assert os.path.getsize(tmp_path / 'data.json') > 0
