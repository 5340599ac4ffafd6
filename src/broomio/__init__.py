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

from . import lowlevel
from ._clock import Clock
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
from ._sync import Condition

# broomio.testing (MockClock, wait_all_tasks_blocked, the pytest plugin) is not imported
# here: programs that do not test pay nothing for it.  `import broomio.testing`.

__version__ = "0.1.0"

__all__ = [
    "BrokenResourceError",
    "BusyResourceError",
    "CancelScope",
    "Cancelled",
    "CapacityLimiter",
    "Clock",
    "ClosedResourceError",
    "Condition",
    "Event",
    "IncompleteReadError",
    "Lock",
    "Loop",
    "Nursery",
    "SocketListener",
    "SocketStream",
    "TLSStream",
    "Queue",
    "Semaphore",
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
    "fail_after",
    "fail_at",
    "lowlevel",
    "move_on_after",
    "move_on_at",
    "open_nursery",
    "open_tcp_listeners",
    "open_tcp_stream",
    "open_tls_stream",
    "open_udp_socket",
    "open_unix_listener",
    "open_unix_stream",
    "run",
    "serve_listeners",
    "serve_tcp",
    "serve_tls",
    "serve_unix",
    "sleep",
    "sleep_forever",
    "sleep_until",
    "__version__",
]
