"""Spark jobs: homepage logs -> graph store -> partition shards.

Each job is a pure ``transform(df, cfg) -> df`` core behind a thin ``main`` that parses
arguments, builds the session and does the I/O, so the same file runs under
``spark-submit`` and as a ``clickgraph`` subcommand.
"""
