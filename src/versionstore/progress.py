"""Progress bars for long operations: a rich bar on a terminal, or the caller's callback.

Long operations (``copy_repository``, ``push``, ``fetch``) take
``progress``: ``True`` shows a transient rich bar on stderr when stderr is a
terminal and the operation is long (at least ``LONG`` steps); ``False``
(or ``None``) shows nothing; a callable is told ``(phase, done, total)`` instead, as
``garbage_collect``'s ``progress`` is.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

__all__ = ["LONG", "ProgressOption", "progress_reporter"]

#: What a ``progress`` argument may be: show a bar (on a terminal), or not, or a callback.
ProgressOption = bool | Callable[[str, int, int], None]
#: Operations with fewer steps than this show no bar (it would only flicker).
LONG = 100


@contextmanager
def progress_reporter(option: ProgressOption | None
                      ) -> Iterator[Callable[[str, int, int], None] | None]:
    """The ``(phase, done, total)`` callback that ``option`` asks for, or ``None``.

    ``None`` asks for nothing, as ``False`` does.

    Raises:
        TypeError: ``option`` is neither a bool, ``None`` nor callable.
    """
    if option is None:
        yield None
        return
    if isinstance(option, bool):
        if not option:
            yield None
            return
    elif callable(option):
        yield option
        return
    else:
        raise TypeError(f"progress must be True, False, None or a callable (phase, done, total); "
                        f"got {type(option).__name__} {reprlib.repr(option)}")
    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def update(phase: str, done: int, total: int) -> None:
            if total < LONG:
                return
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield update
