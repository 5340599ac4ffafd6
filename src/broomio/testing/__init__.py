"""Tools for testing code that uses broomio.

* :class:`MockClock` -- a clock that stands still, runs at any rate, jumps when told to,
  and (``autojump_threshold``) jumps to the next deadline once every task is blocked, so
  ``await broomio.sleep(3600)`` in a test takes no real time.
* :func:`wait_all_tasks_blocked` -- wait until every other task is blocked.
* A pytest plugin (``broomio.testing._pytest_plugin``, registered by the ``pytest11`` entry
  point): ``@pytest.mark.broomio`` runs an ``async def`` test on a fresh loop; fixtures
  ``broomio_loop`` and ``mock_clock``.  See docs/api.md, "Testing".
"""

from ._mock_clock import MockClock
from ._waiting import wait_all_tasks_blocked

__all__ = ["MockClock", "wait_all_tasks_blocked"]
