"""Generation throughput of ``clickgraph generate`` on ``local[2]`` at ~1M and ~10M events.

Runs the generator job in one process (one JVM, started once and warmed up on a tiny
run), times each size ``--repeats`` times and reports the median job wall time, events
per second, time(10M)/time(1M) and the peak resident memory of the Spark JVM (driver and
executors share it in local mode). Output formats are the configured default (JSON lines
and parquet both written) unless ``--formats`` says otherwise.

    clickgraph bench generate                                   # 1M and 10M events
    clickgraph bench generate --json --repeats 1 --users 12500
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time

import psutil

from clickgraph.core.config import load_config
from spark_jobs import generate_logs
from spark_jobs.session import get_spark

# ~1.05M and ~10.5M events with the default generator settings (21 days)
DEFAULT_USERS = [12_500, 125_000]


class PeakRss:
    """Samples the summed RSS of this process's children (the Spark JVM) every 0.2 s."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                rss = sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                rss = 0
            self.peak = max(self.peak, rss)
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def bench(users: list[int], repeats: int, formats: list[str], master: str) -> dict:
    base = [f"spark.master={master}", "spark.driver_memory=6g",
            "generate.formats=[" + ",".join(formats) + "]"]
    spark = get_spark(load_config(None, base).spark, "bench-generate")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        warm = load_config(None, base + [f"paths.root={tmp}/warm", "generate.num_users=500",
                                         "generate.num_days=3"])
        generate_logs.run(spark, warm, log=lambda *_: None)
        for n_users in users:
            times, events, peaks = [], 0, []
            for rep in range(repeats):
                cfg = load_config(None, base + [f"paths.root={tmp}/u{n_users}-{rep}",
                                                f"generate.num_users={n_users}"])
                with PeakRss() as rss:
                    t0 = time.perf_counter()
                    manifest = generate_logs.run(spark, cfg, log=lambda *_: None)
                    times.append(time.perf_counter() - t0)
                peaks.append(rss.peak)
                events = manifest["events_total"]
            wall = statistics.median(times)
            results.append({"num_users": n_users, "events": events, "wall_s_median": round(wall, 2),
                            "wall_s_all": [round(t, 2) for t in times],
                            "events_per_s": round(events / wall),
                            "peak_jvm_rss_mb": round(max(peaks) / 2**20),
                            "jvm_rss_bytes_per_event": round(max(peaks) / events, 1)})
    spark.stop()
    out = {"machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
                      f"{round(psutil.virtual_memory().total / 2**30)} GiB",
           "master": master, "formats": formats, "repeats": repeats, "sizes": results}
    if len(results) >= 2:
        first, last = results[0], results[-1]
        out["time_ratio_last_over_first"] = round(last["wall_s_median"] / first["wall_s_median"], 2)
        out["events_ratio_last_over_first"] = round(results[-1]["events"] / results[0]["events"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=DEFAULT_USERS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--formats", nargs="+", default=["json", "parquet"])
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = parser.parse_args(argv)
    result = bench(args.users, args.repeats, args.formats, args.master)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"generate on {result['master']} ({result['machine']}), formats {result['formats']}, "
          f"median of {result['repeats']}")
    for row in result["sizes"]:
        print(f"  {row['events']:>12,} events  {row['wall_s_median']:>8.1f} s  "
              f"{row['events_per_s']:>10,} events/s  peak JVM RSS {row['peak_jvm_rss_mb']:,} MB")
    if "time_ratio_last_over_first" in result:
        print(f"  time ratio {result['time_ratio_last_over_first']} for "
              f"{result['events_ratio_last_over_first']}x the events")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
