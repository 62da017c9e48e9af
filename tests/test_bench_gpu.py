"""experiments.bench_gpu --tiny: the device script runs end to end on a CPU,
every part measured (none skipped, none failed), with the XLA GPU flags set
(this jaxlib rejects an unknown flag at start, so a flag that rots fails
here, not on the device)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_run_measures_every_part(tmp_path):
  out = tmp_path / 'gpu.json'
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.bench_gpu', '--tiny',
       f'--out={out}'], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  # The expected parts and flags are written out here, not imported: the
  # command's module defines absl flags (--out), which another command's test
  # in this process may have defined already.
  r = json.loads(out.read_text())
  assert '--xla_gpu_enable_latency_hiding_scheduler=true' in r['xla_flags']
  assert r['versions']['jax'] and r['device']
  assert set(r['parts']) == {
      'train_step_gpt2', 'curvature', 'ntk', 'optimizers', 'eigenpairs',
      'train_step_llama', 'sharpness', 'training_jacobian'}
  for name, part in r['parts'].items():
    assert 'error' not in part and 'skipped' not in part, (name, part)
  for shape in ('train_step_gpt2', 'train_step_llama'):
    for kind in ('plain', 'levers'):
      step = r['parts'][shape][kind]
      assert step['step_ms'] > 0 and step['tokens_per_s'] > 0
      assert step['recompiled_after_step_1'] is False
  opt = r['parts']['optimizers']
  assert {'adamp', 'stable_spam', 'sam_adamw'} <= set(opt['ratio_to_adamw'])
  for name in ('soap', 'muon'):  # Timed once registered, else a note.
    assert name in opt['ratio_to_adamw'] or 'skipped' in opt['notes'][name]
  c = r['parts']['curvature']
  assert c['hvp_over_gradient'] > 0 and c['ggn_over_gradient'] > 0
  e = r['parts']['eigenpairs']
  assert len(e['eigenvalues']) == 5 and e['hvps'] >= 5
  assert r['parts']['ntk']['auto_picks'] in ('jacobian', 'ntvp')
  assert r['parts']['training_jacobian']['max_relative_difference'] < 1e-4
  assert r['parts']['sharpness']['probe_s'] > 0
