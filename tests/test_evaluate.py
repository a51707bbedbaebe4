"""clickgraph evaluate: keys, recomputable figures, and no information from the future."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import roc_auc_score

from clickgraph.app.cli import main
from tests.conftest import TINY_TRAIN, tiny_overrides

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def evaluation(trained_run, tmp_path_factory):
    from trainer.evaluate import run_evaluation

    cfg, _ = trained_run
    out = tmp_path_factory.mktemp("eval") / "out"
    return cfg, run_evaluation(cfg, out_url=str(out), log=lambda *_: None)


@pytest.fixture(scope="module")
def model(trained_run):
    from trainer.inference import load_trained

    cfg, _ = trained_run
    return load_trained(cfg)


def test_evaluation_has_the_documented_keys_per_model_and_day(evaluation):
    cfg, result = evaluation
    for section in ("auc", "auc_cold", "auc_warm"):
        assert set(result[section]) == {"gnn", "baseline", "baseline_plus_embeddings"}
        assert all(0.0 <= v <= 1.0 for v in result[section].values())
    assert [d["day"] for d in result["per_day"]] == result["test_days"]
    assert len(result["test_days"]) == cfg.train.test_days
    assert sum(d["events"] for d in result["per_day"]) == result["events"]
    assert sum(b["events"] for b in result["auc_by_past_interactions"]) == result["events"]
    written = json.loads((__import__("pathlib").Path(result["out"]) / "evaluation.json").read_text())
    assert written["auc"] == result["auc"]


def test_reported_aucs_are_those_of_the_written_scores(evaluation):
    cfg, result = evaluation
    scores = pq.read_table(result["scores"]).to_pandas()
    assert len(scores) == result["events"]
    assert int(scores["cold"].sum()) == result["cold_events"]
    assert (scores["cold"] == (scores["past_interactions"] <= cfg.evaluate.cold_start_max_interactions)).all()
    for name in ("gnn", "baseline", "baseline_plus_embeddings"):
        assert result["auc"][name] == pytest.approx(roc_auc_score(scores["label"], scores[name]))
        warm = scores[~scores["cold"]]
        assert result["auc_warm"][name] == pytest.approx(roc_auc_score(warm["label"], warm[name]))
        day = scores[scores["day"] == result["test_days"][-1]]
        assert result["per_day"][-1]["auc"][name] == pytest.approx(roc_auc_score(day["label"], day[name]))


def _edges(cfg, relation):
    from clickgraph.core.graph_store import open_graph_store

    store = open_graph_store(cfg.paths.stage("graph"))
    table = store.read_edges_arrow(relation, None, columns=["src", "dst", "ts_ms"])
    return (table.column("src").to_numpy(), table.column("dst").to_numpy(),
            table.column("ts_ms").to_numpy() // 1000)


def test_as_of_counts_only_see_edges_strictly_before_the_impression(trained_run, model):
    """Brute force from the store's edge lists: an edge at the impression's own second
    or later never counts (the counts would otherwise carry the future, or the click)."""
    from trainer.evaluate import baseline_features, model_counts

    cfg, _ = trained_run
    data = model.data
    imp = data.impressions
    events = torch.arange(0, len(imp), max(1, len(imp) // 300))
    x, names, _ = baseline_features(data, model_counts(model), events)
    user, content, at = imp.user[events].numpy(), imp.content[events].numpy(), imp.time[events].numpy()
    checked = 0
    for relation, column, key, node in (("user__clicked__content", "user_clicked", 0, user),
                                        ("user__impressed__content", "user_impressed", 0, user),
                                        ("user__clicked__content", "content_clicked", 1, content),
                                        ("user__impressed__content", "content_impressed", 1, content)):
        edges = _edges(cfg, relation)
        owner, times = edges[key], edges[2]
        expected = np.array([int(((owner == n) & (times < t)).sum()) for n, t in zip(node, at)])
        assert np.array_equal(x[:, names.index(column)].astype(np.int64), expected), column
        checked += int(expected.sum())
        day_ago = np.array([int(((owner == n) & (times < t) & (times >= t - 86_400)).sum())
                            for n, t in zip(node, at)])
        if column.startswith("content_"):
            assert np.array_equal(x[:, names.index(column + "_24h")].astype(np.int64), day_ago)
    assert checked > 0  # the sample really has history to count


def test_cold_start_counts_interactions_strictly_before(trained_run, model):
    from trainer.evaluate import model_counts

    cfg, _ = trained_run
    imp = model.data.impressions
    events = torch.arange(0, len(imp), max(1, len(imp) // 200))
    got = model_counts(model).interactions(imp.user[events], imp.time[events]).numpy()
    expected = np.zeros(events.numel(), dtype=np.int64)
    for relation in ("user__impressed__content", "user__clicked__content", "user__viewed__content",
                     "user__likes__brand"):
        src, _, times = _edges(cfg, relation)
        expected += np.array([int(((src == u) & (times < t)).sum())
                              for u, t in zip(imp.user[events].numpy(), imp.time[events].numpy())])
    assert np.array_equal(got, expected)
    assert (got == 0).any() and (got > cfg.evaluate.cold_start_max_interactions).any()


def test_embedding_features_are_those_of_the_day_start_and_missing_for_new_nodes(model):
    from clickgraph.core.timeline import day_start
    from trainer.evaluate import day_start_embeddings
    from trainer.inference import embed

    data = model.data
    imp = data.impressions
    cutoff = day_start(data.days[-1])
    events = torch.nonzero(imp.time >= cutoff).view(-1)[:200]
    feats = day_start_embeddings(model, events, batch_size=64, seed=0)
    dim = model.engine.model.cfg.hidden_dim
    users = imp.user[events]
    expected = embed(model, "user", torch.unique(users), cutoff, 64, 0).numpy()
    index = {int(u): i for i, u in enumerate(torch.unique(users))}
    created = data.features["user"].created_time
    for row, user in enumerate(users.tolist()):
        if created is not None and int(created[user]) >= cutoff:
            assert np.isnan(feats[row, :dim]).all()  # signed up that day: not in the export
        else:
            np.testing.assert_allclose(feats[row, :dim], expected[index[user]], rtol=1e-5, atol=1e-6)
    both = ~np.isnan(feats[:, 0]) & ~np.isnan(feats[:, dim])
    np.testing.assert_allclose(feats[both, 2 * dim],
                               (feats[both, :dim] * feats[both, dim:2 * dim]).sum(1), rtol=1e-4, atol=1e-5)


def _cut_before(data, cutoff: int):
    """``data`` with every edge at or after ``cutoff`` (seconds) removed."""
    import dataclasses

    from trainer.graph import TemporalCSR, TemporalHeteroGraph

    csr = {}
    for edge_type, full in data.graph.csr.items():
        keep = full.edge_time < cutoff
        csr[edge_type] = TemporalCSR.from_edges(
            full.neighbor[keep], full.edge_dst()[keep], full.edge_time[keep], full.num_dst,
            weight=full.weight, edge_attr={k: v[keep] for k, v in full.edge_attr.items()})
    graph = TemporalHeteroGraph(num_nodes=dict(data.graph.num_nodes), csr=csr)
    return dataclasses.replace(data, graph=graph)


def test_embeddings_as_of_a_second_ignore_edges_at_that_second(model):
    """A user's embedding as of ``t`` is the same on a graph cut just before ``t``, for a
    ``t`` mid-day that many edges share (the tie case a day-boundary cut never meets)."""
    from trainer.engine import ClickEngine
    from trainer.inference import TrainedModel, embed

    data = model.data
    times = torch.cat([csr.edge_time for csr in data.graph.csr.values()])
    values, counts = torch.unique(times[times > data.impressions.time.median()], return_counts=True)
    cutoff = int(values[counts.argmax()])
    assert int(counts.max()) >= 2, "no second is shared by several edges"
    engine = ClickEngine(_cut_before(data, cutoff), model.engine.cfg)
    engine.model.load_state_dict(model.engine.model.state_dict())
    cut = TrainedModel(engine=engine, meta=model.meta, checkpoint=model.checkpoint)
    touched = torch.cat([csr.edge_dst()[csr.edge_time == cutoff]
                         for (_, _, dst), csr in data.graph.csr.items() if dst == "user"])
    users = torch.unique(touched)
    assert users.numel() > 0
    assert torch.allclose(embed(model, "user", users, cutoff, 128, 3),
                          embed(cut, "user", users, cutoff, 128, 3), atol=1e-6)
    # one second later the shared second's edges are visible, and they do matter
    assert not torch.allclose(embed(model, "user", users, cutoff + 1, 128, 3),
                              embed(cut, "user", users, cutoff + 1, 128, 3), atol=1e-6)


def test_cli_json_and_a_missing_checkpoint(trained_run, tmp_path, capsys):
    cfg, _ = trained_run
    args = [a for o in tiny_overrides(cfg.paths.root) + TINY_TRAIN for a in ("--set", o)]
    assert main(["evaluate", *args, "--json", "--out", str(tmp_path / "e")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["auc"]) == {"gnn", "baseline", "baseline_plus_embeddings"}
    assert main(["evaluate", *args, "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "no meta.json" in capsys.readouterr().err


def test_link_rates_count_only_clicks_and_impressions_strictly_before(trained_run, model):
    """The trees' link features (trainer.tabular): per content link (its brands, say), the
    smoothed click rate of every content sharing the link, from edges strictly before
    the impression, averaged over the content's links; brute force from the store."""
    from trainer.evaluate import model_counts
    from trainer.tabular import baseline_features

    cfg, _ = trained_run
    data = model.data
    imp = data.impressions
    events = torch.arange(0, len(imp), max(1, len(imp) // 150))
    x, names, _ = baseline_features(data, model_counts(model), events)
    links = data.graph.csr[("brand", "rev_of", "content")]
    click_user, click_content, click_time = _edges(cfg, "user__clicked__content")
    _, shown_content, shown_time = _edges(cfg, "user__impressed__content")
    brand_of = {c: links.neighbor[links.indptr[c]:links.indptr[c + 1]].tolist()
                for c in range(data.graph.num_nodes["content"])}
    content_of_brand: dict[int, set] = {}
    for c, brands in brand_of.items():
        for b in brands:
            content_of_brand.setdefault(b, set()).add(c)
    column = x[:, names.index("content_brand_ctr")]
    checked = 0
    for row, (c, t) in enumerate(zip(imp.content[events].tolist(), imp.time[events].tolist())):
        if not brand_of[c]:
            assert np.isnan(column[row])
            continue
        rates = []
        for b in brand_of[c]:
            mates = np.array(sorted(content_of_brand[b]))
            clicks = int((np.isin(click_content, mates) & (click_time < t)).sum())
            shown = int((np.isin(shown_content, mates) & (shown_time < t)).sum())
            rates.append((clicks + 1) / (shown + 20))
            checked += clicks
        assert column[row] == pytest.approx(np.mean(rates), rel=1e-5), (row, c, t)
    assert checked > 0
