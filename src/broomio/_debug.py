"""Debug mode, loop statistics and the task-tree dump.

Debug mode is an internal :class:`~broomio.Instrument` (the *monitor*) plus a little C
(``instrument.c``: never-awaited engine awaitables).  Nothing here runs unless
``Loop(debug=True)`` / ``BROOMIO_DEBUG=1``:

* **Slow steps.**  ``before_task_step``/``after_task_step`` time every step.  Knowing *that*
  a step was slow is not enough -- the task has moved on by the time it yields -- so a
  watchdog thread looks at the loop thread's stack (``sys._current_frames()``) while a step
  is running long: eight times per ``slow_callback_duration`` once a quarter of it has
  passed, the latest sample winning.  A blocking call
  (``time.sleep``, a synchronous socket, a long computation) releases or shares the GIL, so
  the watchdog sees the line that blocks.  When the step ends over the threshold, the
  warning names the task and that line, through ``logging`` and ``warnings``
  (:class:`SlowStepWarning`, attributed to the blocking line).
* **Creation tracebacks.**  ``task_spawned`` records where each task was started; when a task
  fails, ``task_exited`` adds that stack to its exception as a note (PEP 678), so an error in
  an ExceptionGroup says which ``start_soon`` call made the task.
* **Unclosed sockets.**  Sockets created while the loop runs are remembered (weakly); any
  still open when the loop closes gets a ResourceWarning.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
import warnings
import weakref
from types import FrameType
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _engine
from ._instruments import Instrument

if TYPE_CHECKING:
    from ._core import Loop
    from ._engine import NurseryCore, Task

__all__ = ["SlowStepWarning", "LoopStatistics", "dump_task_tree", "statistics"]

logger = logging.getLogger("broomio")

#: How many frames of a spawner's stack debug mode keeps for a task's creation traceback.
CREATION_STACK_LIMIT = 16


class SlowStepWarning(RuntimeWarning):
    """Debug mode: one step of a task ran longer than the loop's ``slow_callback_duration``,
    blocking every other task.  The warning is attributed to the line that blocked."""


def _is_internal(frame: FrameType) -> bool:
    name = frame.f_globals.get("__name__", "")
    return isinstance(name, str) and (name == "broomio" or name.startswith("broomio."))


def _location(frame: FrameType) -> tuple[str, int, str]:
    return frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_qualname


class DebugMonitor(Instrument):
    """The instrument behind debug mode (one per loop)."""

    __slots__ = (
        "_loop",
        "_origins",
        "_sockets",
        "_step",
        "_seq",
        "_sample",
        "_thread_id",
        "_stop",
        "_watchdog",
        "__weakref__",
    )

    def __init__(self, loop: Loop) -> None:
        self._loop = weakref.ref(loop)
        # Raw (filename, lineno, function) triples, innermost first: building a
        # StackSummary per spawn would stat every file (linecache.checkcache), far too slow
        # for a program that spawns thousands of tasks.  Formatted only if the task fails.
        self._origins: weakref.WeakKeyDictionary[Task, list[tuple[str, int, str]]] = (
            weakref.WeakKeyDictionary()
        )
        self._sockets: weakref.WeakSet[Any] = weakref.WeakSet()
        # The step being run, as one tuple (seq, task, start) so that the watchdog thread
        # always reads a consistent triple; None between steps.
        self._step: tuple[int, Task, float] | None = None
        self._seq = 0
        self._sample: tuple[int, list[tuple[str, int, str, bool]]] | None = None
        self._thread_id = 0
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    # ---- the watchdog ------------------------------------------------------------------

    def _threshold(self) -> float:
        loop = self._loop()
        return loop.slow_callback_duration if loop is not None else 0.1

    def _start_watchdog(self) -> None:
        if self._watchdog is not None:
            return
        self._thread_id = threading.get_ident()
        self._stop = threading.Event()
        self._watchdog = threading.Thread(
            target=self._watch, name="broomio debug watchdog", daemon=True
        )
        self._watchdog.start()

    def stop_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            self._stop.set()
            watchdog.join()

    def _watch(self) -> None:
        stop = self._stop
        # Polls eight times per threshold; a step that has run for a quarter of it is
        # sampled at every poll (the latest sample wins), so a step that ends up over the
        # threshold has been sampled several times while it blocked.
        while not stop.wait(max(self._threshold() / 8, 0.001)):
            step = self._step
            if step is None or time.perf_counter() - step[2] < self._threshold() / 4:
                continue
            frame = sys._current_frames().get(self._thread_id)
            if frame is None or self._step is not step:
                continue
            stack: list[tuple[str, int, str, bool]] = []
            f: FrameType | None = frame
            while f is not None and len(stack) < CREATION_STACK_LIMIT:
                stack.append((*_location(f), _is_internal(f)))
                f = f.f_back
            del frame, f
            self._sample = (step[0], stack)

    # ---- hooks -------------------------------------------------------------------------

    def before_run(self) -> None:
        self._start_watchdog()

    def after_run(self) -> None:
        self.stop_watchdog()

    def task_spawned(self, task: Task) -> None:
        try:
            frame: FrameType | None = sys._getframe(1)
        except ValueError:
            return
        # Skip broomio's own frames (Nursery.start's helper, the asyncgen finalizer ...)
        # at the top, so that the stack ends at the user's spawning line.
        while frame is not None and _is_internal(frame) and frame.f_back is not None:
            frame = frame.f_back
        stack: list[tuple[str, int, str]] = []
        while frame is not None and len(stack) < CREATION_STACK_LIMIT:
            code = frame.f_code
            stack.append((code.co_filename, frame.f_lineno, code.co_name))
            frame = frame.f_back
        self._origins[task] = stack

    def task_exited(self, task: Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        origin = self._origins.pop(task, None)
        if exc is None or origin is None:
            return
        note = f"broomio debug: task {task.name!r} was started at (most recent call last):\n"
        summary = traceback.StackSummary.from_list(
            [traceback.FrameSummary(f, n, name) for f, n, name in reversed(origin)]
        )
        note += "".join(summary.format()).rstrip("\n")
        if note not in getattr(exc, "__notes__", ()):
            exc.add_note(note)

    def before_task_step(self, task: Task) -> None:
        if self._watchdog is None:
            self._start_watchdog()  # debug mode was switched on while the loop ran
        self._seq += 1
        self._step = (self._seq, task, time.perf_counter())

    def after_task_step(self, task: Task) -> None:
        step, self._step = self._step, None
        if step is None:
            return
        elapsed = time.perf_counter() - step[2]
        threshold = self._threshold()
        if elapsed < threshold:
            return
        sample = self._sample
        self._sample = None
        stack = sample[1] if sample is not None and sample[0] == step[0] else None
        self._report_slow(task, elapsed, threshold, stack)

    def _report_slow(
        self,
        task: Task,
        elapsed: float,
        threshold: float,
        stack: list[tuple[str, int, str, bool]] | None,
    ) -> None:
        where: tuple[str, int, str]
        if stack:
            # The innermost frame outside broomio is the user's line that blocked.
            first = next((loc for loc in stack if not loc[3]), stack[0])
            where = first[:3]
            how = f"blocked at {where[0]}:{where[1]} in {where[2]}"
        else:
            where = _suspension_point(task) or ("<unknown>", 0, "?")
            how = f"not sampled while blocking; the task is now at {where[0]}:{where[1]}"
        msg = (
            f"broomio debug: task {task.name!r} blocked the event loop for {elapsed:.3f} s "
            f"(slow_callback_duration is {threshold:g} s): {how}"
        )
        if stack:
            logger.warning(
                "%s\nstack while blocking (most recent call last):\n%s",
                msg,
                "".join(f'  File "{f}", line {n}, in {q}\n' for f, n, q, _ in reversed(stack)),
            )
        else:
            logger.warning("%s", msg)
        try:
            warnings.warn_explicit(msg, SlowStepWarning, where[0], where[1])
        except Exception as exc:  # warnings turned into errors: report, never break the loop
            _engine._write_unraisable(exc, task)

    # ---- sockets -----------------------------------------------------------------------

    def track_socket(self, sock: Any) -> None:
        self._sockets.add(sock)

    def loop_closed(self) -> None:
        self.stop_watchdog()
        for sock in list(self._sockets):
            if sock.fileno() >= 0:
                warnings.warn(
                    f"broomio debug: unclosed socket {_describe_socket(sock)} when its loop "
                    "closed",
                    ResourceWarning,
                    stacklevel=3,
                    source=sock,
                )
        self._sockets = weakref.WeakSet()


def _describe_socket(sock: Any) -> str:
    parts = [f"fd={sock.fileno()}"]
    for attr in ("getsockname", "getpeername"):
        try:
            parts.append(f"{attr[3:-4]}={getattr(sock, attr)()!r}")
        except (OSError, AttributeError):
            pass
    return f"<{type(sock).__module__}.{type(sock).__qualname__} {' '.join(parts)}>"


# ---- statistics --------------------------------------------------------------------------


class LoopStatistics(NamedTuple):
    """A snapshot of a loop's state (``broomio.statistics()``, ``Loop.statistics()``).

    Immutable and typed; a NamedTuple rather than a dataclass so that ``import broomio``
    does not pull in the dataclasses machinery."""

    #: Unfinished tasks.
    tasks_living: int
    #: Tasks on the ready queue (runnable, waiting for their turn).
    tasks_runnable: int
    #: Entries in the timer heap: sleeping tasks, delayed starts, cancel-scope deadlines.
    timers_pending: int
    #: Seconds until the earliest timer (0 if one is due, ``inf`` if there is none).
    seconds_to_next_deadline: float
    #: File descriptors registered with the poller (epoll).
    io_fds_registered: int
    #: Tasks waiting for an fd to become readable or writable.
    io_tasks_waiting: int
    #: Callbacks queued by other threads (``call_soon_threadsafe``) not yet run.
    threadsafe_queue_size: int
    #: How many times the loop has polled for I/O (blocking or not) since it was created.
    io_waits: int
    #: Instruments installed on the loop (debug mode's own monitor not counted).
    instruments: int
    #: Whether debug mode is on.
    debug: bool


def loop_statistics(loop: Loop) -> LoopStatistics:
    living, runnable, timers, next_deadline, fds, waiting, inbox, io_waits = loop._statistics()
    return LoopStatistics(
        tasks_living=living,
        tasks_runnable=runnable,
        timers_pending=timers,
        seconds_to_next_deadline=next_deadline,
        io_fds_registered=fds,
        io_tasks_waiting=waiting,
        threadsafe_queue_size=inbox,
        io_waits=io_waits,
        instruments=len(loop.instruments),
        debug=loop.debug,
    )


def statistics() -> LoopStatistics:
    """Statistics of the running loop (inside a task)."""
    loop: Loop = _engine.current_loop()
    return loop.statistics()


# ---- the task tree -----------------------------------------------------------------------


def _next_awaited(aw: Any) -> Any:
    for attr in ("cr_await", "gi_yieldfrom", "ag_await"):
        if hasattr(aw, attr):
            return getattr(aw, attr)
    return None


def _frame_of(aw: Any) -> FrameType | None:
    for attr in ("cr_frame", "gi_frame", "ag_frame"):
        frame = getattr(aw, attr, None)
        if frame is not None:
            return frame  # type: ignore[no-any-return]
    return None


def _await_chain(task: Task) -> tuple[list[FrameType], Any]:
    """The frames of task's coroutine chain (outermost first) and the innermost awaitable
    that is not a coroutine (an engine awaitable), or None."""
    frames: list[FrameType] = []
    aw: Any = task.coro
    for _ in range(1000):  # bounded: a real chain is never that deep
        frame = _frame_of(aw)
        if frame is None:
            # A non-coroutine awaitable (an engine awaitable), or a finished coroutine.
            return frames, (aw if frames else None)
        frames.append(frame)
        aw = _next_awaited(aw)
        if aw is None:
            break
    return frames, None


def _suspension_point(task: Task) -> tuple[str, int, str] | None:
    frames, _ = _await_chain(task)
    user = [f for f in frames if not _is_internal(f)]
    chosen = user[-1] if user else (frames[-1] if frames else None)
    return _location(chosen) if chosen is not None else None


def _describe_task(task: Task) -> str:
    state = repr(task).rsplit(" ", 1)[-1].rstrip(">")
    text = f"task {task.name!r} [{state}]"
    where = _suspension_point(task)
    if where is not None:
        text += f" at {where[0]}:{where[1]} in {where[2]}"
    _, awaited = _await_chain(task)
    if awaited is not None:
        text += f" awaiting {awaited!r}"
    return text


def dump_task_tree(loop: Loop | None = None) -> str:
    """A text picture of the loop's nurseries and tasks, each task with the line where it
    is suspended and what it awaits.  Defaults to the running loop."""
    if loop is None:
        loop = _engine.current_loop()
    if loop.closed:
        raise RuntimeError("this loop is closed")
    tasks = loop._all_tasks()
    children: dict[NurseryCore, list[Task]] = {}
    nurseries_of: dict[Task | None, list[NurseryCore]] = {}
    for task in tasks:
        nursery = task.nursery
        if nursery is None:
            continue
        if nursery not in children:
            children[nursery] = []
            nurseries_of.setdefault(nursery.parent_task, []).append(nursery)
        children[nursery].append(task)

    current = None
    try:
        current = _engine.current_task()
    except RuntimeError:
        pass
    lines = [f"broomio loop {hex(id(loop))}: {len(tasks)} unfinished task(s)"]

    def add_task(task: Task, prefix: str, last: bool) -> None:
        text = _describe_task(task)
        if task is current:
            text += " (running: the caller)"
        lines.append(prefix + ("└── " if last else "├── ") + text)
        inner = prefix + ("    " if last else "│   ")
        owned = nurseries_of.get(task, [])
        for i, nursery in enumerate(owned):
            add_nursery(nursery, inner, i == len(owned) - 1, "nursery")

    def add_nursery(nursery: NurseryCore, prefix: str, last: bool, label: str) -> None:
        kids = children.get(nursery, [])
        lines.append(prefix + ("└── " if last else "├── ") + f"{label} ({len(kids)} task(s))")
        inner = prefix + ("    " if last else "│   ")
        for i, task in enumerate(kids):
            add_task(task, inner, i == len(kids) - 1)

    roots = nurseries_of.get(None, [])
    for i, nursery in enumerate(roots):
        label = "root nursery" if nursery is loop._root_nursery else "nursery"
        add_nursery(nursery, "", i == len(roots) - 1, label)
    return "\n".join(lines)


def env_debug() -> bool:
    return os.environ.get("BROOMIO_DEBUG", "") not in ("", "0")
