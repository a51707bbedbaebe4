"""Script form of `clickgraph bench generate` (the code lives in `spark_jobs/bench_generate.py`)."""

from spark_jobs.bench_generate import main

if __name__ == "__main__":
    raise SystemExit(main())
