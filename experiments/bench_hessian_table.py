"""The README rows of ``experiments.bench_hessian``, formatted from its JSON."""

import numpy as np


def readme_rows(out) -> str:
  """The README's benchmark rows, formatted from the JSON of one run."""
  t, f = out['top5_defaults'], out.get('first_call')
  sp, slq = out['estimator_spread'], out['slq_10x80_seconds']
  rows = []
  if f:
    rows.append(
        f"| top-5 eigenvalues, 4,810-param tanh MLP (512 digits, float32) vs "
        f"dense `eigh`, defaults: ours (Lanczos), PyHessian 0.1 (power "
        f"iteration) | ours {max(t['rel_errors']):.1e} max error, "
        f"{t['hvps']} HVPs, converged; PyHessian "
        f"{min(f['pyhessian_rel_errors']):.1e} to "
        f"{max(f['pyhessian_rel_errors']):.1e}, {f['pyhessian_hvps']} HVPs "
        f"| <= 1e-4 |")
    if 'ratio_warm_cache' in f:
      rows.append(
          f"| first call in a fresh process (compilation included), ours "
          f"with an empty / a warm compilation cache, PyHessian, same MLP | "
          f"{np.median(f['ours_seconds']):.2f} s / "
          f"{np.median(f['ours_warm_cache_seconds']):.2f} s vs "
          f"{np.median(f['pyhessian_seconds']):.2f} s (medians of "
          f"{len(f['ours_seconds'])}, interleaved{_load(out)}) = "
          f"{f['ratio_median']:.2f}x / {f['ratio_warm_cache']:.2f}x "
          f"| <= 1.5x / <= 1x |")
      if 'ratio_plain' in f:
        rows.append(
            f"| the same first call for a plain jitted Lanczos (the warm "
            f"row's baseline at ours' {f['plain_hvps']} HVPs, no convergence "
            f"test: the least a compiled loop compiles), empty / warm cache, "
            f"vs PyHessian | {np.median(f['plain_seconds']):.2f} s / "
            f"{np.median(f['plain_warm_cache_seconds']):.2f} s = "
            f"{f['ratio_plain']:.2f}x / {f['ratio_plain_warm_cache']:.2f}x "
            f"| |")
    else:  # A JSON from before the cache was measured.
      rows.append(
          f"| first call in a fresh process (compilation included), ours / "
          f"PyHessian, same MLP | {np.median(f['ours_seconds']):.2f} s / "
          f"{np.median(f['pyhessian_seconds']):.2f} s (median of "
          f"{len(f['ours_seconds'])}, *loaded*) = {f['ratio_median']:.2f}x "
          f"| <= 1.5x |")
  rows.append(warm_row(out))
  tr = out.get('trace_vs_pyhessian')
  if tr:
    x = tr['ours_xtrace_100']
    rows.append(
        f"| trace of the same Hessian: PyHessian (defaults), ours (XTrace, "
        f"100 HVPs) | PyHessian {tr['pyhessian_rel_error']:.1e} error "
        f"({tr['pyhessian_hvps']} HVPs, no error estimate); ours "
        f"{x['rel_error']:.1e} error, " + (
            f"s.e. {x['stderr'] / tr['exact']:.1e} relative"
            if x.get('stderr') is not None and np.isfinite(x['stderr'])
            else 'no s.e. (XTrace reports none)')
        + ' | |')
  rows.append(
      f"| relative spread of trace estimates over seeds at 30 / 100 HVPs: "
      f"Hutchinson, Hutch++, XTrace | {sp['hutchinson@30']:.1e}, "
      f"{sp['hutch++@30']:.1e}, {sp['xtrace@30']:.1e} / "
      f"{sp['hutchinson@100']:.1e}, {sp['hutch++@100']:.1e}, "
      f"{sp['xtrace@100']:.1e} (Hutchinson / XTrace "
      f"{sp['hutchinson_over_xtrace@30']:.1f}x, "
      f"{sp['hutchinson_over_xtrace@100']:.1f}x) | >= 3x |")
  rows.append(
      f"| diagonal error at 30 / 100 HVPs: Hutchinson, XDiag | "
      f"{sp['diag_hutchinson@30']:.2f}, {sp['diag_xdiag@30']:.2f} / "
      f"{sp['diag_hutchinson@100']:.2f}, {sp['diag_xdiag@100']:.2f} | |")
  rows.append(
      f"| SLQ density, 10 probes x 80 steps: batched (vmap) / one by one | "
      f"{slq['batched']:.2f} s / {slq['sequential']:.2f} s "
      f"(one by one is the CPU default) | faster one |")
  rows.append(
      f"| per-layer report (top eigenvalue, trace, Frobenius per layer + "
      f"whole), first call | {out['block_report']['seconds_first_call']:.1f}"
      f" s | |")
  rows.append(f"| HVP cost / gradient, same MLP | "
              f"{out['hvp_cost_in_gradients']:.2f}x | <= 3 |")
  return '\n'.join(rows)


def _load(out) -> str:
  """', *loaded*: load A at start, B at end' where the run's provenance
  says the machine was loaded (`dynamics.provenance.loaded`), else ''."""
  from dynamics import provenance  # pylint: disable=g-import-not-at-top
  p = out.get('provenance')
  if not p or not provenance.loaded(p):
    return ''
  return (f", *loaded*: load {p['load_1min_start']:.1f} at start, "
          f"{p['load_1min_end']:.1f} at end")


def warm_row(out) -> str:
  """The warm-call row: ours (on-device loop) / plain jitted Lanczos."""
  w = out['warm']
  if 'ratio_total' not in w:  # A JSON from before the on-device loop.
    return (f"| warm top-5 / plain jitted full-reorthogonalization Lanczos "
            f"at equal HVPs ({w['hvps']}; 100) | {w['ratio']:.2f}x "
            f"({1e3 * w['ours_seconds']:.1f} ms vs "
            f"{1e3 * w['plain_lanczos_seconds']:.1f} ms); "
            f"{w['ratio_100']:.2f}x | <= 1x |")
  total = w['hvps'] + w['residual_hvps']
  return (
      f"| warm top-5, on-device loop / plain jitted full-reorthogonalization "
      f"Lanczos at equal HVPs: {total} (ours: {w['hvps']} + "
      f"{w['residual_hvps']} for the true residuals), {w['hvps']}; "
      f"105, 100 | {w['ratio_total']:.2f}x, {w['ratio']:.2f}x "
      f"({1e3 * w['ours_seconds']:.1f} ms vs "
      f"{1e3 * w['plain_total_seconds']:.1f} / "
      f"{1e3 * w['plain_lanczos_seconds']:.1f} ms; host-driven loop "
      f"{w['ratio_host_driver']:.2f}x); {w['ratio_100_total']:.2f}x, "
      f"{w['ratio_100']:.2f}x ({'*loaded*, ' if _load(out) else ''}"
      f"{w['timing']}) | <= 1x |")
