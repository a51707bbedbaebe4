"""Script form of `clickgraph bench sampler` (the code lives in `trainer/bench_sampler.py`)."""

from trainer.bench_sampler import main

if __name__ == "__main__":
    raise SystemExit(main())
