"""Benchmarks for broomio against asyncio, uvloop and trio.

Run ``python -m benchmarks micro`` or ``python -m benchmarks echo`` from the
repository root; see ``benchmarks/README.md`` for the options and how to read
the tables.
"""
