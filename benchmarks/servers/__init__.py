"""Echo servers for ``python -m benchmarks echo``.

Every server is a standalone program: ``--port PORT`` (0 picks a free port),
listens on 127.0.0.1, prints the bound port on stdout as one line once it
accepts connections, and serves until killed.  The Python ones run as
``python -m benchmarks.servers.NAME`` or ``python benchmarks/servers/NAME.py``
(they import nothing from the harness); ``raw_epoll.c`` is compiled by the
harness.
"""
