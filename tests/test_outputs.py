"""dynamics.outputs: the report a command writes, whole, and what it says."""

import json
import os

from dynamics import outputs


def test_write_json_makes_the_directory_and_says_whether_it_replaced(tmp_path):
  path = str(tmp_path / 'a' / 'b' / 'report.json')
  assert outputs.write_json(path, {'x': 1}) is False
  assert outputs.write_json(path, {'x': 2}, sort_keys=True) is True
  with open(path) as f:
    assert json.load(f) == {'x': 2}
  assert os.listdir(os.path.dirname(path)) == ['report.json']  # No .tmp left.


def test_write_report_writes_the_json_and_the_figure(tmp_path):
  drawn = []

  def plot(report, path):
    drawn.append((report, path))
    with open(path, 'wb') as f:
      f.write(b'png')

  out = str(tmp_path / 'out')
  line = outputs.write_report(out, 'ntk', {'k': [1, 2]}, plot)
  assert line == f'wrote {out}/ntk.json and {out}/ntk.png'
  assert drawn == [({'k': [1, 2]}, f'{out}/ntk.png')]
  again = outputs.write_report(out, 'ntk', {'k': [3]}, plot)
  assert again.endswith(' (replacing the previous ones)')
  with open(os.path.join(out, 'ntk.json')) as f:
    assert json.load(f) == {'k': [3]}
  assert outputs.write_report(out, 'bare', {}) == f'wrote {out}/bare.json'
