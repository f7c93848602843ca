"""Progress bars for the long loops: shown on a terminal, silent in logs and CI."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(
    items: Iterable[T], *, desc: str, unit: str = "img", total: int | None = None, enabled: bool = True
) -> Iterator[T]:
    # disable=None is tqdm's "only on a TTY": a bar redrawn with \r is noise in a log file.
    return iter(tqdm(items, desc=desc, unit=unit, total=total, disable=None if enabled else True))
