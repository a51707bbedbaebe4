"""``clickgraph bench``: the benchmarks behind BENCHMARKS.md."""

from __future__ import annotations

import argparse
import importlib

from clickgraph.core.config import Config

HELP = "run a benchmark (sampler, generate); --json for machine-readable output"
DESCRIPTION = """\
Benchmarks print medians over repeated runs and the machine they ran on. Arguments after
the benchmark's name go to it; see `clickgraph bench NAME --help`.

examples:
  clickgraph bench sampler --json            # temporal sampler, 1M nodes / 20M edges, [15, 10, 5]
  clickgraph bench sampler --device cuda
  clickgraph bench generate --users 12500    # generation throughput on local[2]
"""

BENCHMARKS = {"sampler": "trainer.bench_sampler", "generate": "spark_jobs.bench_generate"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of the benchmark")


def run(args: argparse.Namespace, cfg: Config) -> int:
    module = importlib.import_module(BENCHMARKS[args.name])
    return int(module.main(args.bench_args) or 0)
