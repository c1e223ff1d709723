"""Progress bars for long loops: shown on a terminal, silent in logs and pipes (tqdm's `disable=None`)."""
from __future__ import annotations

from typing import Any, Iterable

from tqdm.auto import tqdm


def bar(iterable: Iterable | None = None, show: bool = True, **kwargs: Any) -> tqdm:
    """tqdm over `iterable` when `show` and stderr is a terminal; a silent pass-through otherwise."""
    return tqdm(iterable, disable=None if show else True, **kwargs)
