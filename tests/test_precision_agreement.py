"""experiments.precision_agreement: in float32 remat is bitwise and gradient
accumulation agrees to summation order; under bfloat16 compute both agree
only to bfloat16 round-off (the README's statement)."""

from experiments import precision_agreement


def test_float32_remat_is_bitwise_and_bfloat16_agrees_to_round_off():
  r = precision_agreement.agreement(steps=2)
  assert r['float32']['remat_full']['bitwise'] is True
  assert r['float32']['grad_accum_2']['relative_difference'] < 1e-4
  for name in ('grad_accum_2', 'remat_full'):
    assert 0 < r['bfloat16'][name]['relative_difference'] < 5e-2
