"""Low-level building blocks: parking lots, fd waits, suspension.

These are what the higher-level primitives are made of; most programs never need them.
"""

from ._engine import (
    ParkingLot,
    checkpoint,
    notify_closing,
    suspend,
    wait_readable,
    wait_writable,
)

__all__ = ["ParkingLot", "checkpoint", "notify_closing", "suspend", "wait_readable", "wait_writable"]
