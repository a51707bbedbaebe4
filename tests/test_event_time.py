"""Event time decides every window, cutoff and "as of"; the day folder is storage only.

Two real stores hold the same events: the trained run's (filed by UTC day, as the
generator writes them) and one built from the same logs with the last hours of each day
filed late, under the next day's folder, as real day-partitioned logs do. Everything
downstream must be the same on both. A third store has no creation times at all
(``created_time: null`` for users and content), which evaluate and export must handle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from clickgraph.core.config import load_config
from tests.conftest import TINY_TRAIN, tiny_overrides

pytestmark = pytest.mark.spark

LATE_FROM_S = 21 * 3600  # events after 21:00 UTC are filed under the next day's folder
quiet = lambda *_: None  # noqa: E731


def refile_late(logs: Path, out: Path, days: list[str]) -> int:
    """Copy ``logs`` to ``out`` with every JSON event of ``days[:-1]`` after
    :data:`LATE_FROM_S` moved to the next day's folder; returns how many moved."""
    from clickgraph.core.timeline import utc_day

    shutil.copytree(logs / "entities", out / "entities")
    moved = 0
    lines: dict[str, list[str]] = {d: [] for d in days}
    for day in days:
        for part in sorted((logs / "events" / "json" / f"dt={day}").glob("*.txt")):
            for line in part.read_text().splitlines():
                ts_s = json.loads(line)["ts_ms"] // 1000
                assert utc_day(ts_s) == day  # the generator files by UTC day
                target = day
                if ts_s % 86_400 >= LATE_FROM_S and day != days[-1]:
                    target, moved = days[days.index(day) + 1], moved + 1
                lines[target].append(line)
    for day, rows in lines.items():
        folder = out / "events" / "json" / f"dt={day}"
        folder.mkdir(parents=True)
        (folder / "part-00000.txt").write_text("\n".join(rows) + "\n")
    return moved


@pytest.fixture(scope="module")
def late_store(spark, trained_run, tmp_path_factory):
    """The trained run's built days, refiled late and built again: ``(cfg, moved)``."""
    from spark_jobs import build_graph

    cfg_a, days = trained_run
    built = days[:5]
    root = tmp_path_factory.mktemp("late")
    moved = refile_late(Path(cfg_a.paths.logs), root / "logs", built)
    cfg = load_config(None, tiny_overrides(root) + TINY_TRAIN)
    build_graph.run(spark, cfg, days=built, log=quiet)
    return cfg, moved


class _OnePart:
    """A one-part shard stand-in for :func:`trainer.ray_launch.owned_window_impressions`."""

    part = 0

    def __init__(self, num_users: int):
        self.owned = {"user": torch.arange(num_users)}

    @staticmethod
    def owner(node_type, node):
        return torch.zeros_like(node)


def test_late_filed_events_give_the_same_windows_cutoffs_and_evaluation(trained_run, late_store,
                                                                          tmp_path):
    from clickgraph.core.graph_store import open_graph_store, read_table
    from clickgraph.core.timeline import day_start, split_windows
    from trainer.data import load_graph_data, window_events
    from trainer.evaluate import export_cutoff, run_evaluation
    from trainer.inference import resolve_checkpoint
    from trainer.ray_launch import owned_window_impressions

    cfg_a, _ = trained_run
    cfg_b, moved = late_store
    store_a, store_b = (open_graph_store(c.paths.stage("graph")) for c in (cfg_a, cfg_b))
    assert store_a.days == store_b.days
    # the fixture means something: rows sit in the next day's folder, and the ids agree
    imp_b = store_b.read_edges_arrow("user__impressed__content", columns=["ts_ms"])
    folder_start = np.array([day_start(d) for d in imp_b.column("day").to_pylist()])
    late = imp_b.column("ts_ms").to_numpy() // 1000 < folder_start
    assert moved > 0 and late.sum() > 0
    for node_type in store_a.node_types:
        ids = [read_table(s.id_map_url(node_type)).sort_by("id").column("raw_id") for s in (store_a, store_b)]
        assert ids[0].equals(ids[1]), node_type

    checkpoint = resolve_checkpoint(cfg_a)
    vocab = json.loads((Path(checkpoint) / "meta.json").read_text())["vocab"]
    data = [load_graph_data(c.paths.stage("graph"), vocab=vocab) for c in (cfg_a, cfg_b)]
    for field in ("user", "content", "time", "position", "clicked"):
        assert torch.equal(getattr(data[0].impressions, field), getattr(data[1].impressions, field))
    windows = split_windows(store_b.days, cfg_b.train.val_days, cfg_b.train.test_days)
    assert windows == split_windows(store_a.days, cfg_a.train.val_days, cfg_a.train.test_days)
    for window in ("train", "val", "test"):
        lo, hi = windows.bounds(window)
        events = window_events(data[1].impressions, windows, window)
        time = data[1].impressions.time[events]
        assert events.numel() > 0
        assert (lo is None or bool((time >= lo).all())) and (hi is None or bool((time < hi).all()))
        # the distributed trainer's per-shard read picks the same rows from the folders
        owned = owned_window_impressions(store_b, windows, window, _OnePart(store_b.num_nodes("user")),
                                         cfg_b.graph.log_day_slack_s)
        assert torch.equal(owned.time, time)
        assert torch.equal(owned.user, data[1].impressions.user[events])
    # every late-filed impression joins the export of its own day, before its time
    times = torch.as_tensor(imp_b.column("ts_ms").to_numpy()[late] // 1000)
    cutoffs = export_cutoff(times)
    assert bool((cutoffs <= times).all()) and bool((cutoffs < torch.as_tensor(folder_start[late])).all())

    results = [run_evaluation(c, checkpoint=checkpoint, out_url=str(tmp_path / name), log=quiet)
               for c, name in ((cfg_a, "a"), (cfg_b, "b"))]
    for key in ("auc", "auc_cold", "auc_warm", "per_day", "events", "cold_events", "test_days"):
        assert results[0][key] == results[1][key], key
    scores = [pq.read_table(r["scores"]).to_pandas() for r in results]
    for column in ("time", "user", "content", "gnn", "baseline", "baseline_plus_embeddings"):
        assert np.array_equal(scores[0][column].to_numpy(), scores[1][column].to_numpy()), column


def test_an_impression_joins_the_export_of_its_own_day_never_a_later_one():
    """23:00 on day D filed under D + 1 joins D 00:00's export. Any later cutoff (the next
    day's 00:00, or the folder's day) fails here."""
    from clickgraph.core.timeline import day_start
    from trainer.evaluate import export_cutoff

    d = day_start("2026-03-05")
    times = torch.tensor([d, d + 1, d + 23 * 3600, d + 86_399, d + 86_400])
    assert export_cutoff(times).tolist() == [d, d, d, d, d + 86_400]


def test_weighted_sampling_on_a_real_store_never_reaches_the_seed_second(trained_run):
    """Seeds at the store's own impression times, where the seed impression (and often its
    click) is an edge at exactly the seed second. Every edge is given a random weight up
    to 1,000x, so the weighted draw runs on every relation; no sampled edge, at any hop,
    may be at or after its root seed time."""
    from trainer.data import load_graph_data
    from trainer.sampler import TemporalNeighborSampler

    cfg, _ = trained_run
    data = load_graph_data(cfg.paths.stage("graph"), fit_before=0)
    generator = torch.Generator().manual_seed(0)
    for csr in data.graph.csr.values():
        csr.edge_attr["weight"] = torch.rand(csr.num_edges, generator=generator) * 1000
    imp = data.impressions
    pick = torch.randperm(len(imp), generator=generator)[:2000]
    seeds = {"user": (imp.user[pick], imp.time[pick]), "content": (imp.content[pick], imp.time[pick])}
    sampler = TemporalNeighborSampler(data.graph, [3, 2], weighted=True)
    out = sampler.sample(seeds, generator=generator)
    ties = 0
    for edge_type, csr in data.graph.csr.items():
        _, _, dst_type = edge_type
        root_time = out.node_time[dst_type][out.edge_index[edge_type][1]]
        assert bool((out.edge_time[edge_type] < root_time).all()), edge_type
        if dst_type in seeds:  # the seeds' own edges at the seed second exist
            node, time = seeds[dst_type]
            row_edges = [csr.edge_time[csr.indptr[n]:csr.indptr[n + 1]] for n in node[:200].tolist()]
            ties += sum(int((edges == t).sum()) for edges, t in zip(row_edges, time[:200].tolist()))
    assert ties > 0, "the test needs edges at exactly a seed's time to mean anything"
    assert out.num_edges > 1000


# ------------------------------------------------------------------ no creation times


@pytest.fixture(scope="module")
def no_signup_run(spark, trained_run, tmp_path_factory):
    """The trained run's logs built with ``created_time: null`` for users and content,
    and a model trained on that store: the config."""
    from spark_jobs import build_graph
    from trainer.local import train_single

    cfg_a, days = trained_run
    root = tmp_path_factory.mktemp("no_signup")
    shutil.copytree(cfg_a.paths.logs, root / "logs")
    cfg = load_config(None, tiny_overrides(root) + TINY_TRAIN + [
        "graph.input.entities.user.created_time=null",
        "graph.input.entities.content.created_time=null"])
    build_graph.run(spark, cfg, days=days[:5], log=quiet)
    train_single(cfg, log=quiet)
    return cfg


def test_without_creation_times_nodes_are_known_from_their_first_edge(no_signup_run):
    from clickgraph.core.vocab import NEVER
    from trainer.data import load_graph_data
    from trainer.inference import existing_nodes

    data = load_graph_data(no_signup_run.paths.stage("graph"), fit_before=0)
    assert data.features["user"].created_time is None and data.features["content"].created_time is None
    for node_type in ("user", "content"):
        first = torch.full((data.graph.num_nodes[node_type],), NEVER)
        for (_, _, dst_type), csr in data.graph.csr.items():
            if dst_type == node_type and csr.num_edges:
                first = first.scatter_reduce(0, csr.edge_dst(), csr.edge_time, reduce="amin")
        assert torch.equal(data.known_from[node_type], first)
        cutoff = int(torch.median(first[first < NEVER]))
        assert torch.equal(existing_nodes(data, node_type, cutoff), torch.nonzero(first < cutoff).view(-1))
    # random negatives for an event at t come from content whose first edge is before t
    assert torch.equal(data.content_created, data.known_from["content"])


def test_evaluate_and_export_run_on_a_store_without_creation_times(no_signup_run, tmp_path):
    from trainer.evaluate import run_evaluation
    from trainer.export import run_export

    result = run_evaluation(no_signup_run, out_url=str(tmp_path / "eval"), log=quiet)
    assert all(0 < result["auc"][m] < 1 for m in result["auc"]), result["auc"]
    assert result["auc"]["baseline"] > 0.55, result["auc"]
    assert not any(name.endswith("_age_days") for name in result["baseline_features"])
    manifest = run_export(no_signup_run, out_url=str(tmp_path / "emb"), log=quiet)
    assert manifest["counts"]["user"] > 0 and manifest["counts"]["content"] > 0
