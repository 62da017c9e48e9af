"""The command's grid arguments, parsed without JAX (flag errors come first)."""


def parse_grid(text: str, flag: str) -> list:
  """``'a:b:n'`` (``n`` evenly spaced points from a to b) or ``'x,y,...'``.

  Raises:
    ValueError: one line naming ``--flag``, for a garbled or empty grid.

  Example:
    >>> parse_grid('0:1:3', 'alphas')
    [0.0, 0.5, 1.0]
  """
  try:
    if ':' in text:
      start, stop, num = text.split(':')
      num = int(num)
      if num < 1:
        raise ValueError
      if num == 1:
        return [float(start)]
      step = (float(stop) - float(start)) / (num - 1)
      return [round(float(start) + i * step, 12) for i in range(num)]
    values = [float(v) for v in text.split(',') if v.strip()]
  except ValueError:
    raise ValueError(f"--{flag}={text}: expected 'start:stop:num' with "
                     'num >= 1, or comma-separated numbers') from None
  if not values:
    raise ValueError(f'--{flag}={text}: the grid is empty')
  return values
