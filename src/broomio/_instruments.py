"""Instruments: callbacks the loop runs at points of interest in its life.

Subclass :class:`Instrument` and override the hooks you need; the loop only calls the
methods a subclass overrides, and a loop without instruments pays one pointer test per hook
site in C.  An instrument that raises is removed from its loop and the error is logged on
the ``broomio`` logger.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._engine import Task

__all__ = ["Instrument", "HOOKS"]

logger = logging.getLogger("broomio")

#: The hook names, in the order of the C engine's table (loop.h, BRO_HOOK_*).
HOOKS: tuple[str, ...] = (
    "before_run",
    "after_run",
    "task_spawned",
    "task_scheduled",
    "before_task_step",
    "after_task_step",
    "task_exited",
    "before_io_wait",
    "after_io_wait",
)


class Instrument:
    """Base class of loop instruments.  Every hook does nothing; override the ones you need.

    Hooks run synchronously inside the loop, at awkward moments (in the middle of waking a
    task, while a task finishes): keep them quick, and do not call into the loop from them.
    """

    __slots__ = ()

    def before_run(self) -> None:
        """The loop starts running (each call of ``run()``)."""

    def after_run(self) -> None:
        """The loop stops running."""

    def task_spawned(self, task: Task) -> None:
        """A task was created (``start_soon``, ``start_later``, ``Nursery.start``)."""

    def task_scheduled(self, task: Task) -> None:
        """A task became runnable: it was put on the ready queue."""

    def before_task_step(self, task: Task) -> None:
        """The loop is about to run one step of ``task`` (until its next suspension)."""

    def after_task_step(self, task: Task) -> None:
        """One step of ``task`` has run."""

    def task_exited(self, task: Task) -> None:
        """``task`` finished (returned, raised or was cancelled); ``task.done()`` is true."""

    def before_io_wait(self, timeout: float) -> None:
        """The loop is about to wait for I/O for at most ``timeout`` seconds (may be inf)."""

    def after_io_wait(self, timeout: float) -> None:
        """The I/O wait that was started with ``timeout`` returned."""


def overrides(instrument: Instrument, name: str) -> bool:
    """True when ``instrument``'s class defines hook ``name`` itself (not the base no-op)."""
    return getattr(type(instrument), name, None) is not getattr(Instrument, name)


def hook_table(instruments: list[Instrument]) -> tuple[tuple[Any, ...], ...]:
    """For each hook, the bound methods of the instruments that override it."""
    return tuple(
        tuple(getattr(inst, name) for inst in instruments if overrides(inst, name))
        for name in HOOKS
    )


def check_instrument(instrument: object) -> Instrument:
    if not isinstance(instrument, Instrument):
        raise TypeError(
            f"instruments must be broomio.Instrument instances, got {type(instrument).__name__}"
        )
    return instrument


def report_failure(fn: Any, exc: BaseException) -> None:
    owner = getattr(fn, "__self__", fn)
    logger.error(
        "broomio: instrument %r raised in %s(); it has been removed from the loop",
        owner,
        getattr(fn, "__name__", "a hook"),
        exc_info=(type(exc), exc, exc.__traceback__),
    )
