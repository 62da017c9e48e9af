"""experiments.bench_llm_cpu: the recorded commands and the figures it keeps
from each bench_step record (the step itself is too dear for the suite)."""

from experiments import bench_llm_cpu as b


def test_commands_are_the_recorded_ones():
  assert b.command('reader') == (
      'python -m experiments.bench_data --tokens=50000000 --batches=100')
  assert b.command('llama350m') == (
      'python -m experiments.bench_step --size=llama350m --batch_size=1 '
      '--steps=1 --repeats=2 --baseline=false --peak_flops=1.26e11')


def test_step_figures_keep_the_readme_keys():
  part = {'params': 10, 'tokens_per_step': 512, 'dtype': 'bfloat16',
          'ours_s_per_step': 2.0, 'ours_tokens_per_s': 256.0,
          'gflops_per_s': 3.5, 'mfu': 0.25}
  assert b.step_figures(part) == {
      'params': 10, 'tokens_per_step': 512, 'dtype': 'bfloat16',
      's_per_step': 2.0, 'tokens_per_s': 256.0, 'gflops_per_s': 3.5,
      'mfu_vs_1.26e11': 0.25}
  assert b.memory_gb() > 0
