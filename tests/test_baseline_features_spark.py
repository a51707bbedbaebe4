"""The tabular baseline's features in Spark (spark_jobs/baseline_features.py) equal the
in-memory ones (trainer.tabular.baseline_features) on a tiny store, ties included."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from clickgraph.core.config import load_config
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.spark

quiet = lambda *_: None


@pytest.fixture(scope="module")
def store(spark, tmp_path_factory):
    """A tiny 3-day store and its data loaded in memory: ``(url, data)``."""
    from clickgraph.core.graph_store import open_graph_store
    from clickgraph.core.timeline import split_windows
    from spark_jobs import build_graph, generate_logs
    from trainer.data import load_graph_data

    root = tmp_path_factory.mktemp("baseline_spark")
    cfg = load_config(None, tiny_overrides(root))
    generate_logs.run(spark, cfg, log=quiet)
    build_graph.run(spark, cfg, log=quiet)
    url = cfg.paths.stage("graph")
    store = open_graph_store(url)
    _add_same_second_impressions(store)
    windows = split_windows(store.days, 1, 1)
    return url, load_graph_data(url, fit_before=windows.val_start)


def _add_same_second_impressions(store) -> None:
    """Three more impressions in the second of one stored impression (of user ``u`` and
    content ``c``, at milliseconds 0, 999 and 500 of that second): ``u`` then has three
    impressions in one second, ``c`` two (the generator never writes two in one second).
    Written as one more file of that day's folder, which every reader reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clickgraph.core.graph_store import IMPRESSIONS

    day = store.days[1]
    table = store.read_edges_arrow(IMPRESSIONS, [day]).drop_columns(["day"])
    first = table.slice(0, 1).to_pylist()[0]
    second_ms = first["ts_ms"] - first["ts_ms"] % 1000
    others = [c for c in table.column("dst").to_pylist() if c != first["dst"]][:2]
    rows = [{**first, "dst": others[0], "ts_ms": second_ms},
            {**first, "dst": others[1], "ts_ms": second_ms + 999},
            {**first, "src": (first["src"] + 1) % store.num_nodes("user"),
             "ts_ms": second_ms + 500}]
    folder = store.edge_urls(IMPRESSIONS, [day])[day]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema),
                   f"{folder}/part-same-second.parquet")


def _in_memory(data, queries):
    """``baseline_features`` of the impressions ``queries`` (an :class:`Impressions`)."""
    from trainer.asof import AsOfCounts
    from trainer.sampler import TemporalNeighborSampler
    from trainer.tabular import baseline_features

    sampler = TemporalNeighborSampler(data.graph, [1])
    asked = dataclasses.replace(data, impressions=queries)
    return baseline_features(asked, AsOfCounts(sampler, data.graph.edge_types),
                             torch.arange(len(queries)))


def _edge_ties(data):
    """Queries at the exact second of edges, and one second later: a click's own second
    (the click must not count, then must), and the user with the most impressions in one
    second (none of them count at that second; all do one second later)."""
    from trainer.data import Impressions

    clicks = data.graph.csr[("user", "clicked", "content")]
    pick = torch.arange(0, clicks.num_edges, max(1, clicks.num_edges // 40))
    user, content, at = clicks.neighbor[pick], clicks.edge_dst()[pick], clicks.edge_time[pick]
    imp = data.impressions
    key = imp.user * (int(imp.time.max()) + 1) + imp.time
    unique, counts = torch.unique(key, return_counts=True)
    busiest = unique[counts.argmax()]
    row = int(torch.nonzero(key == busiest)[0])
    user = torch.cat([user, imp.user[row:row + 1]])
    content = torch.cat([content, imp.content[row:row + 1]])
    at = torch.cat([at, imp.time[row:row + 1]])
    rows = Impressions(user=torch.cat([user, user]), content=torch.cat([content, content]),
                       time=torch.cat([at, at + 1]), position=torch.full((2 * user.numel(),), 3),
                       clicked=torch.zeros(2 * user.numel()))
    return rows, int(counts.max())


def _queries(data):
    from trainer.data import Impressions

    imp = data.impressions
    sample = imp.take(torch.arange(0, len(imp), max(1, len(imp) // 400)))
    ties, same_second = _edge_ties(data)
    both = Impressions(*(torch.cat([getattr(sample, f), getattr(ties, f)]) for f in
                         ("user", "content", "time", "position", "clicked")))
    return both, len(sample), same_second


def test_spark_features_equal_the_in_memory_ones_ties_included(spark, store):
    from spark_jobs.baseline_features import features_of

    url, data = store
    queries, sampled, same_second = _queries(data)
    assert same_second >= 3  # the store has several edges of one user in one second
    x_mem, names_mem, cat_mem = _in_memory(data, queries)
    x, names, categorical = features_of(spark, url, data.vocab, queries.user.numpy(),
                                        queries.content.numpy(), queries.time.numpy(),
                                        queries.position.numpy())
    assert names == names_mem and categorical == cat_mem
    # every kind of column is there: attributes, counts, rates, the links of 3 types
    for name in ("user_attr0", "content_age_days", "hour", "weekday", "user_likes",
                 "content_clicked_24h", "user_ctr", "content_brand_links",
                 "content_brand_ctr", "content_article_impressed"):
        assert name in names, name
    assert x.shape == x_mem.shape and x.dtype == np.float32
    # counts, codes and context exactly; rates, means and ages too (both compute them in
    # doubles and cast once: the trees move their bins on a last-bit difference)
    for column, name in enumerate(names):
        assert np.array_equal(x[:, column], x_mem[:, column], equal_nan=True), name
    assert np.isnan(x_mem).any() == np.isnan(x).any()
    # the ties: an edge at the query's second never counts, one second later it does
    ties = x[sampled:]
    half = len(ties) // 2
    at_second, after = ties[:half], ties[half:]
    clicked = names.index("user_clicked")
    assert bool((after[:-1, clicked] >= at_second[:-1, clicked] + 1).all())
    shown = names.index("user_impressed")
    assert after[-1, shown] - at_second[-1, shown] >= same_second


def test_bad_queries_and_vocabularies_are_named(spark, store):
    from clickgraph.core.errors import InputError
    from clickgraph.core.graph_store import open_graph_store
    from spark_jobs.baseline_features import features_of, transform

    url, data = store
    one = np.zeros(1, dtype=np.int64)
    vocab = {**data.vocab, "user": {}}
    with pytest.raises(InputError, match="vocabulary of 'user' lacks attribute"):
        features_of(spark, url, vocab, one, one, one, one)
    with pytest.raises(InputError, match=r"lack column\(s\) \['position'\]"):
        transform(spark, open_graph_store(url),
                  spark.createDataFrame([(0, 0, 0, 0)], "row long, user long, content long, "
                                                        "time long"), data.vocab)
