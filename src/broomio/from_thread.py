"""Calling back into a broomio loop from a worker thread.

Inside a function running in ``broomio.run_in_thread``::

    from broomio import from_thread

    def blocking_work():
        from_thread.run_sync(print, "runs in the loop's thread")
        return from_thread.run(some_async_fn, arg)  # runs as a task of the loop

Both block the worker thread until the loop has answered and return the result (or raise
the exception).  They know their loop when called from a thread started by
``run_in_thread``; any other thread passes it explicitly with ``loop=``.  Called from a
loop's own thread they raise ``RuntimeError`` (the loop would wait for itself).
"""

from ._threads import from_thread_run as run
from ._threads import from_thread_run_sync as run_sync

__all__ = ["run", "run_sync"]
