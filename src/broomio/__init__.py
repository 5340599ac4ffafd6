"""broomio: fast structured-concurrency async I/O for Python, with its engine in C.

    from broomio import Loop, sleep

    async def hello(i):
        await sleep(1)
        print("hello", i)

    loop = Loop()
    loop.start_soon(hello(1))
    loop.start_soon(hello(2))
    loop.run()
"""

from . import from_thread, lowlevel
from ._clock import Clock
from ._debug import LoopStatistics, SlowStepWarning, statistics
from ._instruments import Instrument
from ._core import (
    Loop,
    Nursery,
    TaskStatus,
    fail_after,
    fail_at,
    move_on_after,
    move_on_at,
    open_nursery,
    run,
)
from ._streams import (
    FdStream,
    SocketListener,
    SocketStream,
    UDPSocket,
    open_tcp_listeners,
    open_tcp_stream,
    open_udp_socket,
    open_unix_listener,
    open_unix_stream,
    serve_listeners,
    serve_tcp,
    serve_unix,
)
from ._tls import TLSStream, open_tls_stream, serve_tls
from ._engine import (
    BrokenResourceError,
    BusyResourceError,
    Cancelled,
    CancelScope,
    CapacityLimiter,
    ClosedResourceError,
    Event,
    IncompleteReadError,
    Lock,
    Queue,
    Semaphore,
    Task,
    TaskCancelled,
    WouldBlock,
    checkpoint,
    current_effective_deadline,
    current_loop,
    current_task,
    current_time,
    sleep,
    sleep_forever,
    sleep_until,
)
from ._files import AsyncFile, Path, open_file, wrap_file
from ._processes import BrokenWorkerError, run_in_process
from ._signals import SignalReceiver, open_signal_receiver
from ._subprocess import Process, open_process, run_process
from ._sync import Condition
from ._threads import current_default_thread_limiter, run_in_thread

# broomio.testing (MockClock, wait_all_tasks_blocked, the pytest plugin) is not imported
# here: programs that do not test pay nothing for it.  `import broomio.testing`.

__version__ = "0.1.0"

__all__ = [
    "AsyncFile",
    "BrokenResourceError",
    "BrokenWorkerError",
    "BusyResourceError",
    "CancelScope",
    "Cancelled",
    "CapacityLimiter",
    "Clock",
    "ClosedResourceError",
    "Condition",
    "Event",
    "FdStream",
    "IncompleteReadError",
    "Instrument",
    "Lock",
    "Loop",
    "LoopStatistics",
    "Nursery",
    "Path",
    "Process",
    "SocketListener",
    "SocketStream",
    "TLSStream",
    "Queue",
    "Semaphore",
    "SignalReceiver",
    "SlowStepWarning",
    "Task",
    "TaskCancelled",
    "TaskStatus",
    "UDPSocket",
    "WouldBlock",
    "checkpoint",
    "current_effective_deadline",
    "current_loop",
    "current_task",
    "current_time",
    "current_default_thread_limiter",
    "fail_after",
    "fail_at",
    "from_thread",
    "lowlevel",
    "move_on_after",
    "move_on_at",
    "open_file",
    "open_nursery",
    "open_process",
    "open_signal_receiver",
    "open_tcp_listeners",
    "open_tcp_stream",
    "open_tls_stream",
    "open_udp_socket",
    "open_unix_listener",
    "open_unix_stream",
    "run",
    "run_in_process",
    "run_in_thread",
    "run_process",
    "serve_listeners",
    "serve_tcp",
    "serve_tls",
    "serve_unix",
    "sleep",
    "sleep_forever",
    "sleep_until",
    "statistics",
    "wrap_file",
    "__version__",
]
