"""Low-level building blocks: parking lots, fd waits, suspension.

These are what the higher-level primitives are made of; most programs never need them.
"""

from typing import Any

from ._debug import dump_task_tree
from ._engine import (
    ParkingLot,
    checkpoint,
    notify_closing,
    suspend,
    wait_readable,
    wait_writable,
)

from ._engine import current_loop as _current_loop
from ._instruments import Instrument


def add_instrument(instrument: Instrument) -> None:
    """Install ``instrument`` on the running loop (see ``Loop.add_instrument``)."""
    _current_loop().add_instrument(instrument)


def remove_instrument(instrument: Instrument) -> None:
    """Remove ``instrument`` from the running loop; KeyError if it is not installed."""
    _current_loop().remove_instrument(instrument)


def current_instruments() -> tuple[Instrument, ...]:
    """The instruments of the running loop."""
    loop: Any = _current_loop()
    return loop.instruments  # type: ignore[no-any-return]


__all__ = [
    "Instrument",
    "ParkingLot",
    "add_instrument",
    "checkpoint",
    "current_instruments",
    "dump_task_tree",
    "notify_closing",
    "remove_instrument",
    "suspend",
    "wait_readable",
    "wait_writable",
]
