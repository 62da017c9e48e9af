"""Progress bars: one tqdm wrapper for the loop, the commands and the analyses.

`bar` returns a tqdm bar (``tqdm.auto``: a widget in a notebook, text in a
terminal), or a bar that draws nothing when progress is off or tqdm is not
installed, so callers never test for None::

  with progress.bar(total, 'SLQ products', enabled=show) as b:
    for ...:
      b.update(1)
"""

from typing import Any, Optional


class NoBar:
  """The interface of a tqdm bar that callers use, drawing nothing."""

  def update(self, n: int = 1) -> None:
    del n

  def set_postfix(self, *args, **kwargs) -> None:
    del args, kwargs

  def close(self) -> None:
    pass

  def __enter__(self) -> 'NoBar':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def bar(total: Optional[int], desc: str, *, enabled: bool = True,
        **tqdm_kwargs: Any) -> Any:
  """A tqdm bar over ``total`` items (None: unknown) named ``desc``.

  Args:
    total: items the bar counts to (None: a counter without an end).
    desc: its name.
    enabled: False gives a `NoBar` (as does a missing tqdm).
    **tqdm_kwargs: passed to ``tqdm`` (``leave``, ``unit``, ``initial``,
      ``mininterval``, ``dynamic_ncols``, ...).

  Returns:
    A ``tqdm.auto.tqdm`` or a `NoBar`; either has ``update``,
    ``set_postfix``, ``close`` and is a context manager.

  Example:
    >>> with bar(3, 'steps', enabled=False) as b:
    ...   b.update(3)
    >>> isinstance(b, NoBar)
    True
  """
  if not enabled:
    return NoBar()
  try:
    from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return NoBar()
  return tqdm.tqdm(total=total, desc=desc, **tqdm_kwargs)
