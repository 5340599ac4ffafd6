"""Blocking calls in worker threads: ``run_in_thread`` and ``from_thread``.

How a call travels
------------------
``run_in_thread(fn, *args)`` borrows a token from a ``CapacityLimiter`` (by default one per
loop with 40 tokens) on behalf of a fresh borrower object, then queues the call for a
worker thread and suspends the task (``lowlevel.suspend``).  The worker runs ``fn`` inside a
copy of the task's ``contextvars.Context``, counts itself idle again, and sends the
outcome to the loop with ``loop.call_soon_threadsafe`` (the engine's mutex-protected inbox
plus one eventfd write).  In the loop thread that callback returns the limiter token and
reschedules the task with the value or the exception.  The exception object is the one
raised in the thread, so its traceback still holds the worker's frames; re-raising it in
the task prepends the task's own frames.

The token is returned only when the thread has really finished, also when the task stopped
waiting earlier: a limiter of N tokens means at most N threads busy for this loop.

Cancellation
------------
``cancellable=False`` (the default): the suspension's abort function refuses, so the task
keeps waiting for the thread, like a shielded scope; a cancelled task sees ``Cancelled`` at
its next checkpoint.  ``cancellable=True``: the abort function marks the call abandoned and
accepts, so the task is cancelled at once; the thread runs on and its outcome is dropped
when it arrives (the token is still returned then).

The thread cache
----------------
Worker threads are our own daemon threads, reused from call to call; jobs go through one
process-wide ``queue.SimpleQueue`` (see :class:`_ThreadCache`), with no Future and no
executor machinery per call.  Under load a worker goes from job to job without sleeping.
A worker idle for ``IDLE_TIMEOUT`` seconds exits, so a burst leaves no permanent threads
behind; daemon threads mean an abandoned call (``cancellable=True``) never keeps the
interpreter from exiting.  After ``fork()`` the child starts with an empty cache (the
parent's threads do not exist there).  (A first version handed each job to one sleeping
thread through a per-thread lock, like trio's thread cache: as fast one call at a time,
but 2-4x slower with 20 concurrent callers, because every job woke a sleeping thread.)

``from_thread``
---------------
A worker thread remembers (in a thread-local) which loop started its current call.
``from_thread.run_sync(fn)`` and ``from_thread.run(afn)`` send a request through the same
inbox and block the worker on a lock until the loop answers; ``run`` starts ``afn`` as a
root task of that loop.  The values of context variables flow along as copies.  Requests
still pending when the loop is closed are failed with ``RuntimeError`` so that no worker
waits forever.
"""

from __future__ import annotations

import contextvars
import os
import queue
import sys
import threading
import types
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._engine import (
    CapacityLimiter,
    LoopCore,
    current_loop,
    current_task,
    suspend,
)

T = TypeVar("T")

DEFAULT_THREAD_LIMIT = 40
IDLE_TIMEOUT = 10.0  # seconds an idle worker thread waits for a job before it exits


# --------------------------------------------------------------------------------------------
# The process-wide cache of worker threads


Job = tuple[Callable[[], Any], Callable[[Any, BaseException | None], None]]


class _ThreadCache:
    """Reusable daemon worker threads taking jobs from one shared queue.

    ``idle`` counts the workers that are waiting (or about to wait) for a job and have not
    been promised one yet.  ``submit`` either claims one of those workers (decrements
    ``idle``) or starts a new thread, then queues the job; so every queued job has a worker
    that will take it.  A worker that finishes a job counts itself idle *before* it reports
    the result -- the loop often submits the next call as soon as it has the result, and
    that call should find this thread rather than start another -- then takes the next job.
    Under load a worker goes from job to job without sleeping, which is what makes many
    concurrent calls cheap.  A worker that waits ``IDLE_TIMEOUT`` seconds for nothing
    retires, unless every idle worker has been promised a job (then one is on its way).
    """

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.idle = 0

    def submit(self, job: Job) -> None:
        # Find the job's taker first: if no thread can be started, nothing has been queued
        # and the caller gets the error (a claimed worker just waits the moment until put).
        with self.lock:
            claimed = self.idle > 0
            if claimed:
                self.idle -= 1
        if not claimed:
            threading.Thread(target=self._work, name="broomio-worker", daemon=True).start()
        self.jobs.put(job)

    def _work(self) -> None:
        get = self.jobs.get
        while True:
            try:
                fn, report = get(timeout=IDLE_TIMEOUT)
            except queue.Empty:
                with self.lock:
                    if self.idle:
                        self.idle -= 1
                        return
                continue  # every idle worker is promised a job: ours is coming
            try:
                result = fn()
            except BaseException as exc:  # goes to the waiting task, never lost here
                error: BaseException | None = exc
                result = None
                del exc
            else:
                error = None
            with self.lock:
                self.idle += 1
            try:
                report(result, error)
            except BaseException as exc:  # this thread counts as idle already: it must live on
                sys.unraisablehook(_unraisable(exc, report))
                del exc
            del fn, report, result, error


def _unraisable(exc: BaseException, obj: object) -> Any:
    return types.SimpleNamespace(
        exc_type=type(exc), exc_value=exc, exc_traceback=exc.__traceback__,
        err_msg="Exception in a broomio worker thread while reporting a result", object=obj,
    )


_cache = _ThreadCache()


def _start_thread_soon(
    fn: Callable[[], Any], report: Callable[[Any, BaseException | None], None]
) -> None:
    """Run ``fn()`` in a worker thread, then ``report(result, error)`` in that thread."""
    _cache.submit((fn, report))


def _reset_after_fork() -> None:
    # The parent's workers do not exist in the child, and its lock may have been held.
    global _cache
    _cache = _ThreadCache()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


# --------------------------------------------------------------------------------------------
# Per-loop state: the default limiter and pending from_thread requests


class _LoopThreads:
    __slots__ = ("limiter", "pending")

    def __init__(self) -> None:
        self.limiter = CapacityLimiter(DEFAULT_THREAD_LIMIT)
        self.pending: set[_Reply] = set()


def _state(loop: LoopCore) -> _LoopThreads:
    state: _LoopThreads | None = getattr(loop, "_broomio_threads", None)
    if state is None:
        state = _LoopThreads()
        loop._broomio_threads = state  # type: ignore[attr-defined]
    return state


def current_default_thread_limiter() -> CapacityLimiter:
    """The running loop's default limiter for ``run_in_thread`` (40 tokens; adjustable)."""
    return _state(current_loop()).limiter


def loop_closed(loop: LoopCore) -> None:
    """Called by ``Loop.close()``: fail the from_thread requests nobody will answer now."""
    state: _LoopThreads | None = getattr(loop, "_broomio_threads", None)
    if state is None:
        return
    pending, state.pending = state.pending, set()
    # list(): a snapshot taken atomically, while worker threads may still add to the set
    # (their call_soon_threadsafe then fails: the loop is already marked closed).
    for reply in list(pending):
        reply.set(None, RuntimeError("the broomio loop was closed before it ran this call"))


# --------------------------------------------------------------------------------------------
# run_in_thread

# Which loop started the call the current worker thread is running (for from_thread).
_local = threading.local()


class _ThreadCall:
    """One run_in_thread call: its borrower identity, its outcome path, its abandonment."""

    __slots__ = ("loop", "task", "limiter", "abandoned", "fn", "args", "context")

    def __init__(
        self,
        loop: LoopCore,
        limiter: Any,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        self.loop = loop
        self.task = current_task()
        self.limiter = limiter
        self.abandoned = False
        self.fn = fn
        self.args = args
        self.context = contextvars.copy_context()

    # -- in the worker thread
    def run(self) -> Any:
        _local.loop = self.loop
        try:
            result = self.context.run(self.fn, *self.args)
        finally:
            _local.loop = None
        if isinstance(result, types.CoroutineType):
            result.close()
            raise TypeError(
                f"run_in_thread() expects a synchronous function, but {self.fn!r} returned "
                "a coroutine: await it directly instead"
            )
        return result

    def report(self, result: Any, error: BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.deliver, result, error)
        except RuntimeError:
            pass  # the loop was closed meanwhile: nobody is waiting any more

    # -- in the loop thread
    def deliver(self, result: Any, error: BaseException | None) -> None:
        self.fn = self.args = None  # type: ignore[assignment]
        try:
            # Can only fail if someone tampered with the limiter; the task must be woken
            # anyway (the error goes to sys.unraisablehook via the inbox).
            self.limiter.release_on_behalf_of(self)
        finally:
            if not self.abandoned:
                if error is not None:
                    self.loop.reschedule(self.task, exception=error)
                else:
                    self.loop.reschedule(self.task, result)

    def abort_cancellable(self) -> bool:
        self.abandoned = True
        return True


def _abort_refused() -> bool:
    return False


async def run_in_thread(
    fn: Callable[..., T],
    *args: Any,
    cancellable: bool = False,
    limiter: Any = None,
) -> T:
    """Run ``fn(*args)`` in a worker thread without blocking the loop; return its result.

    ``cancellable=False``: a cancelled caller still waits for the thread (shielded).
    ``cancellable=True``: a cancelled caller is cancelled at once and the thread's result is
    discarded.  ``limiter``: a ``CapacityLimiter`` (default: the loop's, 40 threads); its
    token is held until the thread has finished.
    """
    if not callable(fn):
        raise TypeError(f"run_in_thread() argument 'fn' must be callable, not {type(fn).__name__}")
    loop = current_loop()
    if limiter is None:
        limiter = _state(loop).limiter
    elif not (
        hasattr(limiter, "acquire_on_behalf_of") and hasattr(limiter, "release_on_behalf_of")
    ):
        raise TypeError(
            "run_in_thread() argument 'limiter' must be a CapacityLimiter, "
            f"not {type(limiter).__name__}"
        )
    call = _ThreadCall(loop, limiter, fn, args)
    await limiter.acquire_on_behalf_of(call)
    try:
        _start_thread_soon(call.run, call.report)
    except BaseException:
        limiter.release_on_behalf_of(call)
        raise
    result: T = await suspend(call.abort_cancellable if cancellable else _abort_refused)
    return result


# --------------------------------------------------------------------------------------------
# from_thread


class _Reply:
    """A worker thread's wait for the loop's answer (a lock the loop releases)."""

    __slots__ = ("_lock", "_result", "_error", "_done")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._result: Any = None
        self._error: BaseException | None = None
        self._done = False

    def set(self, result: Any, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        self._result = result
        self._error = error
        self._lock.release()

    def wait(self) -> Any:
        self._lock.acquire()
        error, result = self._error, self._result
        self._error = self._result = None
        if error is not None:
            try:
                raise error
            finally:
                del error
        return result


def _target_loop(loop: LoopCore | None, what: str) -> LoopCore:
    try:
        current_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            f"from_thread.{what}() was called from a broomio loop's own thread; it is for "
            "worker threads (blocking here would deadlock the loop): call or await the "
            "function directly instead"
        )
    if loop is None:
        loop = getattr(_local, "loop", None)
        if loop is None:
            raise RuntimeError(
                f"from_thread.{what}() must be called from a thread started by "
                "broomio.run_in_thread(), or be given the loop as loop=..."
            )
    elif not isinstance(loop, LoopCore):
        raise TypeError(f"from_thread.{what}() argument 'loop' must be a broomio Loop, "
                        f"not {type(loop).__name__}")
    if loop.closed:
        raise RuntimeError(f"from_thread.{what}(): the broomio loop is closed")
    return loop


def _send(loop: LoopCore, request: Callable[[_Reply], None]) -> Any:
    reply = _Reply()
    pending = _state(loop).pending

    def handle() -> None:
        pending.discard(reply)
        request(reply)

    pending.add(reply)
    try:
        loop.call_soon_threadsafe(handle)
    except RuntimeError:
        pending.discard(reply)
        raise RuntimeError("the broomio loop is closed") from None
    return reply.wait()


def from_thread_run_sync(fn: Callable[..., T], *args: Any, loop: LoopCore | None = None) -> T:
    """From a worker thread: run ``fn(*args)`` in the loop's thread, return its result."""
    if not callable(fn):
        raise TypeError(f"from_thread.run_sync() argument 'fn' must be callable, "
                        f"not {type(fn).__name__}")
    target = _target_loop(loop, "run_sync")
    context = contextvars.copy_context()

    def request(reply: _Reply) -> None:
        try:
            result = context.run(fn, *args)
            if isinstance(result, types.CoroutineType):
                result.close()
                raise TypeError(
                    f"from_thread.run_sync() expects a synchronous function, but {fn!r} "
                    "returned a coroutine: use from_thread.run() for async functions"
                )
        except BaseException as exc:  # travels back to the worker thread
            reply.set(None, exc)
        else:
            reply.set(result, None)

    result: T = _send(target, request)
    return result


def from_thread_run(
    afn: Callable[..., Awaitable[T]], *args: Any, loop: LoopCore | None = None
) -> T:
    """From a worker thread: run ``await afn(*args)`` as a task of the loop, return its
    result (or raise its exception)."""
    if not callable(afn):
        raise TypeError(f"from_thread.run() argument 'afn' must be an async function, "
                        f"not {type(afn).__name__}")
    target = _target_loop(loop, "run")
    context = contextvars.copy_context()

    def request(reply: _Reply) -> None:
        async def runner() -> None:
            try:
                result = await afn(*args)
            except BaseException as exc:  # travels back to the worker thread
                reply.set(None, exc)
            else:
                reply.set(result, None)

        name = getattr(afn, "__qualname__", None) or repr(afn)
        try:
            context.run(target.start_soon, runner, name=f"from_thread.run({name})")
        except BaseException as exc:
            reply.set(None, exc)

    result: T = _send(target, request)
    return result
