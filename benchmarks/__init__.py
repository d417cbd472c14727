"""The benchmark of docs/benchmarks.md, kept out of the package it times.

Run from a clone: ``bash benchmarks/run.sh``, or ``.venv/bin/python benchmarks/benchmark.py``
with its options (``--help``). The modules, one job each:

``cases``
    The layer shapes timed (:class:`~benchmarks.cases.Case`), the implementations of
    each, and their plain-array floors.
``measure``
    How a step is measured: its time, round-robin with the others, and its peak memory.
``report``
    A run's results as a table, a JSON file and a plot, with the machine they came from.
``benchmark``
    The command line, which runs the cases and writes the report.
``tiled_linear``
    :class:`~benchmarks.tiled_linear.TiledLinearFunction`, the 2016 algorithm, the
    baseline the shared layer is timed against.
"""
