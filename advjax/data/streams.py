"""Endless streams over finite batch sources, for adversaries that consume data by the batch."""

import itertools
from collections.abc import Callable, Iterable, Iterator

from advjax.errors import DataError


def cycle(batches: Iterable[dict] | Callable[[], Iterable[dict]], user: str = "stream") -> Iterator[dict]:
  """Endless stream of batches, restarting the source when it runs out.

  Args:
    batches: a re-iterable (list, grain dataset) or a zero-argument callable
      returning a fresh iterable; a one-shot iterator (a generator) is consumed once.
    user: who consumes the stream, for error messages ('universal attack').

  Yields:
    Batches, cycling over the source.

  Raises:
    DataError: the source is empty, or a one-shot iterator ran out.
  """
  one_shot = not callable(batches) and iter(batches) is batches
  for epoch in itertools.count():
    source = batches() if callable(batches) else batches
    count = 0
    for batch in source:
      count += 1
      yield batch
    if count == 0:
      raise DataError(f"{user}: the batch source is empty" + (" (an exhausted iterator?)" if epoch else ""))
    if one_shot:
      raise DataError(f"{user}: the batch iterator ran out after {count} batches; "
                      "pass a re-iterable or a callable returning a fresh iterator to cycle")
