"""Runs a test file's multi-device checks in a child with N CPU devices.

``XLA_FLAGS=--xla_force_host_platform_device_count=N`` must be set before JAX
starts, and the pytest process has one device, so the checks run in one
subprocess: the test file run as a script with ``--child``, printing one line
``RESULT <json>`` that the tests read.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_results(test_file: str, num_devices: int = 8):
  """The JSON of ``python test_file --child``'s last ``RESULT`` line.

  The child inherits this process's XLA flags (and the suite's compilation
  cache) with the device count appended.
  """
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=(
      os.environ.get('XLA_FLAGS', '') +
      f' --xla_force_host_platform_device_count={num_devices}').strip())
  proc = subprocess.run([sys.executable, os.path.abspath(test_file), '--child'],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
  return json.loads(lines[-1][len('RESULT '):])
