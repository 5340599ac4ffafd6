"""The broomio pytest plugin.

Registered through the ``pytest11`` entry point under the name
``broomio.testing._pytest_plugin`` (the module's own name, so that loading it explicitly
with ``-p broomio.testing._pytest_plugin`` or ``pytest_plugins = [...]`` as well never
registers it twice; ``-p no:broomio.testing._pytest_plugin`` disables it).

* ``@pytest.mark.broomio`` on an ``async def`` test runs it on a fresh :class:`broomio.Loop`
  (options: ``@pytest.mark.broomio(clock=..., debug=True)``).  A task the test started that
  is still alive when the test returns fails the test (it is cancelled first).  On a plain
  ``def`` test the marker only configures the ``broomio_loop`` fixture, and an ``async def``
  test without the marker is left to other plugins.
* ``broomio_loop``: the loop the marked ``async def`` test runs on (running while the test
  runs); for a sync test, a fresh loop the test can run things on.  Closed afterwards.
* ``mock_clock``: a :class:`MockClock` with ``autojump_threshold=0``; when a marked test
  requests it, its loop runs on it (so sleeps and timeouts take no real time).
* ``async def`` fixtures (coroutines or async generators, function scope) requested by a
  marked test run on the test's loop, in the test's task, set up in dependency order and
  torn down in reverse order after it (see ``_Teardown``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import pytest

# Binds fixtures defined in test classes to the test's instance (private pytest API, so
# it is optional: without it, such async fixtures are called unbound).
_pytest_resolve: Any
try:
    from _pytest.fixtures import resolve_fixture_function as _pytest_resolve
except ImportError:  # pragma: no cover
    _pytest_resolve = None

from .. import _engine
from .._core import Loop
from ._mock_clock import MockClock

_MARKER = "broomio"
_LOOP_FIXTURE = "broomio_loop"
_OPTIONS = ("clock", "debug", "instruments")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "broomio(clock=None, debug=None): run this async def test on a fresh broomio Loop "
        "(fixtures: broomio_loop, mock_clock)",
    )


def _is_marked_async(item: pytest.Item) -> bool:
    return (
        isinstance(item, pytest.Function)
        and item.get_closest_marker(_MARKER) is not None
        and inspect.iscoroutinefunction(item.obj)
    )


def _loop_options(item: pytest.Item) -> dict[str, Any]:
    marker = item.get_closest_marker(_MARKER)
    if marker is None:
        return {}
    if marker.args:
        pytest.fail(
            f"@pytest.mark.broomio takes keyword arguments only ({', '.join(_OPTIONS)}), "
            f"got positional {marker.args!r}",
            pytrace=False,
        )
    unknown = sorted(set(marker.kwargs) - set(_OPTIONS))
    if unknown:
        pytest.fail(
            f"@pytest.mark.broomio got unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(_OPTIONS)}",
            pytrace=False,
        )
    return dict(marker.kwargs)


@pytest.fixture
def mock_clock() -> MockClock:
    """A MockClock with autojump_threshold=0; a marked test's loop runs on it."""
    return MockClock(autojump_threshold=0)


@pytest.fixture
def broomio_loop(request: pytest.FixtureRequest) -> Iterator[Loop]:
    """A fresh broomio Loop (the one a @pytest.mark.broomio async test runs on)."""
    options = _loop_options(request.node)
    if "mock_clock" in request.fixturenames:
        if options.get("clock") is not None:
            pytest.fail(
                "the test uses the mock_clock fixture and @pytest.mark.broomio(clock=...): "
                "choose one",
                pytrace=False,
            )
        options["clock"] = request.getfixturevalue("mock_clock")
    loop = Loop(**options)
    try:
        yield loop
    finally:
        loop.close()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # A marked async test always runs on the broomio_loop fixture, requested or not.
    if _is_marked_async(item):
        assert isinstance(item, pytest.Function)
        if _LOOP_FIXTURE not in item.fixturenames:
            item.fixturenames.append(_LOOP_FIXTURE)


# ---- async fixtures ----------------------------------------------------------------------


class _AsyncFixture:
    """Stands in for an async fixture's value until the test's loop runs it."""

    def __init__(self, name: str, func: Any, kwargs: dict[str, Any]) -> None:
        self.name = name
        self.func = func
        self.kwargs = kwargs
        self.value: Any = None
        self.ready = False

    def __repr__(self) -> str:
        return f"<async fixture {self.name!r}, only usable by @pytest.mark.broomio async tests>"

    async def resolve(self, stack: contextlib.AsyncExitStack) -> Any:
        __tracebackhide__ = True
        if not self.ready:
            kwargs = {k: await _resolve(v, stack) for k, v in self.kwargs.items()}
            if inspect.isasyncgenfunction(self.func):
                agen = self.func(**kwargs)
                self.value = await agen.__anext__()
                stack.push_async_exit(_Teardown(self.name, agen))
            else:
                self.value = await self.func(**kwargs)
            self.ready = True
        return self.value


class _PluginFailure(Exception):
    """A failure the plugin reports itself (without a traceback): a leaked task, a fixture
    that yielded twice.  Raised inside the loop so that the loop cancels what is left."""


class _Teardown:
    """Finishes an async generator fixture after the test, like pytest's yield fixtures:
    the fixture resumes normally whatever the test's outcome.  Only a Cancelled is raised at
    the fixture's yield, because it may belong to a cancel scope the fixture itself opened
    around the test (its nursery's, when a background task failed); if the fixture's scope
    catches it, the cancellation ends there."""

    def __init__(self, name: str, agen: Any) -> None:
        self.name = name
        self.agen = agen

    async def __call__(self, etype: Any, exc: BaseException | None, tb: Any) -> bool:
        __tracebackhide__ = True
        try:
            if isinstance(exc, _engine.Cancelled):
                await self.agen.athrow(exc)
            else:
                await self.agen.__anext__()
        except StopAsyncIteration:
            return isinstance(exc, _engine.Cancelled)
        await self.agen.aclose()
        raise _PluginFailure(f"async fixture {self.name!r} yielded more than once")


async def _resolve(value: Any, stack: contextlib.AsyncExitStack) -> Any:
    __tracebackhide__ = True
    if isinstance(value, _AsyncFixture):
        return await value.resolve(stack)
    return value


def _resolve_fixture_function(fixturedef: Any, request: pytest.FixtureRequest) -> Any:
    if _pytest_resolve is not None:
        return _pytest_resolve(fixturedef, request)
    return fixturedef.func


def _requesting_item(request: pytest.FixtureRequest) -> Any:
    return getattr(request, "_pyfuncitem", request.node)


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Any:
    item = _requesting_item(request)
    if not _is_marked_async(item):
        return None  # not ours: pytest (or another plugin) handles it
    func = fixturedef.func
    if not (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)):
        for argname in fixturedef.argnames:
            if isinstance(request.getfixturevalue(argname), _AsyncFixture):
                pytest.fail(
                    f"sync fixture {fixturedef.argname!r} depends on async fixture "
                    f"{argname!r}: only async fixtures and the test can use async fixtures",
                    pytrace=False,
                )
        return None
    if fixturedef.scope != "function":
        pytest.fail(
            f"async fixture {fixturedef.argname!r} has scope {fixturedef.scope!r}; async "
            f"fixtures of @pytest.mark.broomio tests must be function-scoped (each test has "
            f"its own loop)",
            pytrace=False,
        )
    # Fixtures defined in a test class are bound to the test's instance, as pytest does.
    func = _resolve_fixture_function(fixturedef, request)
    kwargs = {name: request.getfixturevalue(name) for name in fixturedef.argnames}
    placeholder = _AsyncFixture(fixturedef.argname, func, kwargs)
    fixturedef.cached_result = (placeholder, fixturedef.cache_key(request), None)
    return placeholder


# ---- running the test --------------------------------------------------------------------


async def _run_test(fn: Any, kwargs: dict[str, Any]) -> None:
    __tracebackhide__ = True
    async with contextlib.AsyncExitStack() as stack:
        args = {name: await _resolve(value, stack) for name, value in kwargs.items()}
        await fn(**args)
    # Every nursery of the test is closed by now, so what is still alive was started with
    # loop.start_soon() and never waited for.  Failing here also cancels those tasks (a
    # root task's error cancels the other root tasks).
    me = _engine.current_task()
    root = _engine.current_loop()._root_nursery
    leaked = [t for t in (root.child_tasks if root is not None else ()) if t is not me]
    if leaked:
        names = ", ".join(repr(t.name) for t in leaked)
        raise _PluginFailure(f"the test left {len(leaked)} task(s) running: {names}")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not _is_marked_async(pyfuncitem):
        return None
    loop = pyfuncitem.funcargs[_LOOP_FIXTURE]
    assert isinstance(loop, Loop)
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    failure = None
    try:
        loop.run_until_complete(_run_test, pyfuncitem.obj, kwargs)
    except _PluginFailure as exc:
        failure = str(exc)
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    return True
