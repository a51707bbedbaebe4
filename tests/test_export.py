"""``clickgraph export``: every existing node once, no future edges, atomic reruns, drift,
recommendation controls that agree with the lists written."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from clickgraph.app.cli import main
from clickgraph.core import fs
from clickgraph.core.graph_store import open_graph_store, read_table
from tests.conftest import TINY_TRAIN, tiny_overrides
from trainer import checkpoint as ckpt
from trainer.data import load_graph_data
from trainer.engine import ClickEngine
from trainer.export import day_end, embedding_matrix, parse_cutoff, previous_version, run_export, version_name
from trainer.inference import (
    TrainedModel,
    embed,
    existing_nodes,
    resolve_checkpoint,
    score_pairs,
    train_config_of,
)

pytestmark = pytest.mark.spark

quiet = lambda *_: None


def built_days(cfg) -> list[str]:
    return sorted(open_graph_store(cfg.paths.stage("graph")).days)


def model_on_days(cfg, days: list[str] | None) -> TrainedModel:
    """The latest checkpoint on the store restricted to edges of ``days``."""
    url = resolve_checkpoint(cfg)
    meta = ckpt.read_meta(url)
    data = load_graph_data(cfg.paths.stage("graph"), vocab=meta["vocab"], days=days)
    engine = ClickEngine(data, train_config_of(meta, cfg.train))
    engine.model.load_state_dict(ckpt.read_state(url)["model"])
    engine.model.eval()
    return TrainedModel(engine=engine, meta=meta, checkpoint=url)


def read_export(folder: str) -> dict:
    out = {name: pq.read_table(fs.join(folder, f"{name}.parquet"))
           for name in ("user", "content", "recommendations")}
    out["manifest"] = fs.read_json(fs.join(folder, fs.MANIFEST_NAME))
    return out


@pytest.fixture(scope="module")
def default_export(trained_run, tmp_path_factory):
    """An export at the default cutoff into a fresh root: ``(manifest, folder)``."""
    cfg, _ = trained_run
    root = str(tmp_path_factory.mktemp("embeddings"))
    manifest = run_export(cfg, out_url=root, log=quiet)
    return manifest, fs.join(root, manifest["cutoff"]["date"])


def test_export_writes_every_existing_node_once_with_store_raw_ids(trained_run, default_export):
    cfg, _ = trained_run
    manifest, folder = default_export
    days = built_days(cfg)
    cutoff = day_end(days[-1])
    assert manifest["cutoff"]["seconds"] == cutoff and folder.endswith(version_name(cutoff))
    exported = read_export(folder)
    assert exported["manifest"] == json.loads(json.dumps(manifest, default=str))
    store = open_graph_store(cfg.paths.stage("graph"))
    data = load_graph_data(cfg.paths.stage("graph"),
                           vocab=ckpt.read_meta(resolve_checkpoint(cfg))["vocab"])
    for node_type in ("user", "content"):
        table = exported[node_type]
        ids = table.column("id").to_numpy()
        expected = existing_nodes(data, node_type, cutoff).numpy()
        assert len(np.unique(ids)) == len(ids) == manifest["counts"][node_type]
        assert np.array_equal(np.sort(ids), np.sort(expected))
        id_map = read_table(store.id_map_url(node_type)).to_pydict()
        raw_of = dict(zip(id_map["id"], id_map["raw_id"], strict=True))
        assert table.column("raw_id").to_pylist() == [raw_of[i] for i in ids.tolist()]
        matrix = embedding_matrix(table)
        assert matrix.shape == (len(ids), manifest["dim"]) and matrix.dtype == np.float32
        assert np.isfinite(matrix).all() and np.abs(matrix).sum(axis=1).min() > 0
        assert set(table.column("cutoff_ts_ms").to_pylist()) == {cutoff * 1000}
        meta = json.loads(table.schema.metadata[b"clickgraph"])
        assert meta["cutoff_seconds"] == cutoff
        assert meta["model"]["checkpoint"] == resolve_checkpoint(cfg)
    # not every node of the store exists at the cutoff's... but every one before it does
    assert manifest["counts"]["user"] <= store.num_nodes("user")
    assert manifest["model"]["checkpoint"] == resolve_checkpoint(cfg)
    assert manifest["graph"]["days"] == days
    assert manifest["drift"] is None and "no earlier export" in manifest["drift_reason"]
    assert manifest["model_trained_after_cutoff"] is False
    staging = [p for p in fs.filesystem(folder)[0].ls(folder.rsplit("/", 1)[0], detail=False)
               if p.rsplit("/", 1)[-1].startswith(".")]
    assert staging == []


def test_embeddings_ignore_edges_at_or_after_the_cutoff(trained_run, tmp_path):
    """Export as of the start of the last built day from the full store; the same nodes
    embedded from a store that never loaded that day's edges must be identical."""
    cfg, _ = trained_run
    days = built_days(cfg)
    cutoff = parse_cutoff(days[-1])
    manifest = run_export(cfg, cutoff=days[-1], out_url=str(tmp_path), log=quiet)
    assert manifest["cutoff"]["seconds"] == cutoff
    exported = read_export(fs.join(str(tmp_path), days[-1]))

    earlier = model_on_days(cfg, days[:-1])
    full = model_on_days(cfg, None)
    late_edges = sum(int((csr.edge_time >= cutoff).sum()) for csr in full.data.graph.csr.values())
    assert late_edges > 0, "the last day must add edges for this test to mean anything"
    ev = cfg.evaluate
    for node_type in ("user", "content"):
        nodes = existing_nodes(earlier.data, node_type, cutoff)
        ids = torch.tensor(exported[node_type].column("id").to_numpy())
        assert torch.equal(nodes, ids)
        restricted = embed(earlier, node_type, nodes, cutoff, ev.embedding_batch_size, ev.seed)
        assert np.array_equal(embedding_matrix(exported[node_type]), restricted.numpy())
        # the restricted store really lacks what the last day adds: seen from its end, the
        # two stores give different embeddings
        end = day_end(days[-1])
        assert not torch.allclose(embed(earlier, node_type, nodes, end, ev.embedding_batch_size, ev.seed),
                                  embed(full, node_type, nodes, end, ev.embedding_batch_size, ev.seed))


def test_rerun_is_identical_replaces_the_folder_and_reports_drift_one(trained_run, tmp_path):
    cfg, _ = trained_run
    root = str(tmp_path / "embeddings")
    first = run_export(cfg, out_url=root, log=quiet)
    folder = fs.join(root, first["cutoff"]["date"])
    before = read_export(folder)
    second = run_export(cfg, out_url=root, log=quiet)
    after = read_export(folder)
    assert sorted(p.name for p in (tmp_path / "embeddings").iterdir()) == [first["cutoff"]["date"]]
    assert sorted(p.name for p in (tmp_path / "embeddings" / first["cutoff"]["date"]).iterdir()) == [
        "_MANIFEST.json", "content.parquet", "recommendations.parquet", "user.parquet"]
    for name in ("user", "content", "recommendations"):
        assert after[name].equals(before[name])
    assert second["recommendations"] == first["recommendations"]
    drift = second["drift"]
    assert drift["previous"]["url"] == folder and second["drift_reason"] is None
    for node_type in ("user", "content"):
        assert drift[node_type]["in_both"] == second["counts"][node_type]
        assert drift[node_type]["new_share"] == 0.0 and drift[node_type]["gone"] == 0
        assert drift[node_type]["mean_cosine"] == pytest.approx(1.0, abs=1e-6)


def test_an_export_that_dies_leaves_the_previous_version_whole(trained_run, tmp_path, monkeypatch):
    import trainer.export as export

    cfg, _ = trained_run
    root = tmp_path / "embeddings"
    first = run_export(cfg, out_url=str(root), log=quiet)
    folder = root / first["cutoff"]["date"]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    write = export.write_parquet

    def dies_on_recommendations(url, table):
        if url.endswith("recommendations.parquet"):
            raise OSError("disk full (simulated)")
        write(url, table)

    monkeypatch.setattr(export, "write_parquet", dies_on_recommendations)
    with pytest.raises(OSError, match="simulated"):
        run_export(cfg, out_url=str(root), log=quiet)
    assert [p.name for p in root.iterdir()] == [folder.name]  # no staging folder left
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_drift_against_an_earlier_cutoff_is_computed_from_both_versions(trained_run, tmp_path):
    cfg, _ = trained_run
    days = built_days(cfg)
    root = str(tmp_path)
    run_export(cfg, cutoff=days[-2], out_url=root, log=quiet)
    manifest = run_export(cfg, cutoff=days[-1], out_url=root, log=quiet)
    old, new = read_export(fs.join(root, days[-2])), read_export(fs.join(root, days[-1]))
    drift = manifest["drift"]
    assert drift["previous"]["url"] == fs.join(root, days[-2])
    assert drift["previous"]["cutoff"]["seconds"] == parse_cutoff(days[-2])
    for node_type in ("user", "content"):
        old_rows = dict(zip(old[node_type].column("raw_id").to_pylist(),
                            embedding_matrix(old[node_type]), strict=True))
        new_raw = new[node_type].column("raw_id").to_pylist()
        new_matrix = embedding_matrix(new[node_type])
        cosines = [float(np.dot(v, old_rows[r]) / (np.linalg.norm(v) * np.linalg.norm(old_rows[r])))
                   for r, v in zip(new_raw, new_matrix, strict=True) if r in old_rows]
        stats = drift[node_type]
        assert stats["in_both"] == len(cosines) > 0
        assert stats["new_share"] == pytest.approx(1 - len(cosines) / len(new_raw))
        assert stats["mean_cosine"] == pytest.approx(np.mean(cosines), abs=1e-5)
        # a day of edges and ageing moved the embeddings
        assert -1.0 <= stats["mean_cosine"] < 0.9999
    assert drift["user"]["new_share"] > 0  # users sign up during the day
    # a backfill of the earlier date does not compare with the later version
    assert previous_version(root, parse_cutoff(days[-2]) - 1) is None


def test_bad_cutoff_and_missing_checkpoint_are_clear_errors(trained_run, tmp_path, capsys):
    cfg, _ = trained_run
    days = built_days(cfg)
    with pytest.raises(ValueError, match="'yesterday' is neither a date"):
        run_export(cfg, cutoff="yesterday", out_url=str(tmp_path), log=quiet)
    with pytest.raises(ValueError, match=f"after the end of .*last day {days[-1]}"):
        run_export(cfg, cutoff="2099-01-01", out_url=str(tmp_path), log=quiet)
    missing = str(tmp_path / "no-such-checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="no-such-checkpoint"):
        run_export(cfg, checkpoint=missing, out_url=str(tmp_path), log=quiet)
    assert not any(tmp_path.iterdir()) or all(p.name == "no-such-checkpoint"
                                              for p in tmp_path.iterdir())

    overrides = [x for o in tiny_overrides(cfg.paths.root) + TINY_TRAIN for x in ("--set", o)]
    assert main(["export", *overrides, "--cutoff", "2026-13-45", "--out", str(tmp_path)]) == 2
    assert "cutoff '2026-13-45' is neither" in capsys.readouterr().err
    assert main(["export", *overrides, "--checkpoint", missing, "--out", str(tmp_path)]) == 2
    assert "no-such-checkpoint" in capsys.readouterr().err
    untrained = [x for o in [f"paths.train={tmp_path / 'empty-train'}"] for x in ("--set", o)]
    assert main(["export", *overrides, *untrained, "--out", str(tmp_path)]) == 2
    assert "latest_checkpoint.json not found" in capsys.readouterr().err


def test_cli_json_prints_the_manifest_written(trained_run, tmp_path, capsys):
    cfg, _ = trained_run
    overrides = [x for o in tiny_overrides(cfg.paths.root) + TINY_TRAIN for x in ("--set", o)]
    assert main(["export", *overrides, "--out", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert "export: wrote" in captured.err
    assert printed == fs.read_json(fs.join(str(tmp_path), printed["cutoff"]["date"], fs.MANIFEST_NAME))


def test_recommendation_controls_agree_with_the_lists(trained_run, default_export):
    """recommendations.parquet holds the lists after the exposure controls; their figures
    are ``recommendations_controlled``, the plain top-k's are ``recommendations``."""
    cfg, _ = trained_run
    manifest, folder = default_export
    controls = manifest["recommendations_controlled"]
    plain = manifest["recommendations"]
    assert controls["diversity"]["method"] == cfg.evaluate.diversity.method
    assert plain["catalogue_size"] == controls["catalogue_size"]
    assert plain["mean_score"] >= controls["mean_score"]  # the plain top-k maximises it
    assert controls["against_uncontrolled"]["predicted_ctr_ratio"] == pytest.approx(
        controls["mean_score"] / plain["mean_score"])
    exported = read_export(folder)
    recs = exported["recommendations"].to_pydict()
    content = exported["content"]
    catalogue = content.column("raw_id").to_pylist()
    k, num_users = cfg.evaluate.top_k, min(cfg.evaluate.recommend_users, manifest["counts"]["user"])
    assert controls["users"] == num_users and controls["top_k"] == k
    assert len(recs["rank"]) == num_users * k
    assert len(set(recs["user_raw_id"])) == num_users
    assert set(recs["user_raw_id"]) <= set(exported["user"].column("raw_id").to_pylist())
    assert set(recs["content_raw_id"]) <= set(catalogue)

    by_user: dict[str, list] = {}
    for user, rank, item, score in zip(recs["user_raw_id"], recs["rank"], recs["content_raw_id"],
                                       recs["score"], strict=True):
        by_user.setdefault(user, []).append((rank, item, score))
    for rows in by_user.values():
        assert [r for r, _, _ in rows] == list(range(1, k + 1))
        assert len({i for _, i, _ in rows}) == k
        scores = [s for _, _, s in rows]
        assert all(0 < s < 1 for s in scores)  # MMR may list a lower score first

    assert controls["catalogue_size"] == len(catalogue)
    assert controls["coverage"] == pytest.approx(len(set(recs["content_raw_id"])) / len(catalogue))
    nodes = read_table(open_graph_store(cfg.paths.stage("graph")).node_url("content")).to_pydict()
    ctype = dict(zip(nodes["raw_id"], nodes["content_type"], strict=True))
    video_topk = np.mean([ctype[i] == "video" for i in recs["content_raw_id"]])
    video_catalogue = np.mean([ctype[i] == "video" for i in catalogue])
    assert 0 < video_catalogue < 1
    assert controls["video_share_topk"] == pytest.approx(video_topk)
    assert controls["video_share_catalogue"] == pytest.approx(video_catalogue)
    assert sum(controls["content_type_share_catalogue"].values()) == pytest.approx(1.0)
    assert 0 <= controls["intra_list_diversity"] <= 2 and 0 < controls["category_diversity"] <= 1

    # the intra-list diversity recomputed from the content embeddings of the written lists
    row_of = {r: i for i, r in enumerate(catalogue)}
    unit = embedding_matrix(content)
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    diversities = []
    for rows in by_user.values():
        vectors = unit[[row_of[i] for _, i, _ in rows]]
        similarity = vectors @ vectors.T
        diversities.append(1 - (similarity.sum() - np.trace(similarity)) / (k * (k - 1)))
    assert controls["intra_list_diversity"] == pytest.approx(np.mean(diversities), abs=1e-5)
    similarity = unit @ unit.T
    n = len(catalogue)
    assert controls["catalogue_diversity"] == pytest.approx(
        1 - (similarity.sum() - np.trace(similarity)) / (n * (n - 1)), abs=1e-5)
    distinct = set(recs["content_raw_id"])
    assert controls["video_share_distinct"] == pytest.approx(
        np.mean([ctype[i] == "video" for i in distinct]))

    # the first item of a list is the best of the whole catalogue for that user
    model = model_on_days(cfg, None)
    user_rows = {r: i for i, r in enumerate(exported["user"].column("raw_id").to_pylist())}
    user_raw = next(iter(by_user))
    user_state = torch.as_tensor(embedding_matrix(exported["user"])[user_rows[user_raw]])
    content_states = torch.as_tensor(embedding_matrix(content))
    n = content_states.shape[0]
    cutoff = manifest["cutoff"]["seconds"]
    from trainer.inference import PairContext

    user_id = torch.tensor([exported["user"].column("id").to_pylist()[user_rows[user_raw]]])
    content_ids = torch.tensor(content.column("id").to_pylist())
    context = PairContext(model, user_id, content_ids, cutoff)  # history attention's summaries
    summaries = context.summaries(user_state.expand(n, -1), content_states,
                                  torch.zeros(n, dtype=torch.int64), torch.arange(n))
    assert len(summaries) == 2
    scores = score_pairs(model, user_state.expand(n, -1), content_states,
                         torch.zeros(n, dtype=torch.int64), torch.full((n,), cutoff, dtype=torch.int64),
                         summaries)
    ranked = [catalogue[i] for i in torch.argsort(scores, descending=True, stable=True).tolist()]
    listed = [i for _, i, _ in by_user[user_raw]]
    # the controls choose from the user's best rerank_candidates, the best one first
    assert listed[0] == ranked[0]
    assert set(listed) <= set(ranked[:cfg.evaluate.rerank_candidates])


def test_the_one_hop_pair_context_gives_the_full_samples_summaries(trained_run):
    """The recommendation controls' context samples one hop and skips message passing:
    the history attention reads only the seeds' hop-1 edges and initial states, so the
    summaries equal those of the full (2-hop) sample with message passing."""
    from trainer.export import day_end
    from trainer.inference import PairContext

    cfg, _ = trained_run
    model = model_on_days(cfg, None)
    engine = model.engine
    cutoff = day_end(sorted(engine.data.days)[-1])
    users, contents = torch.arange(12), torch.arange(30)
    one_hop = PairContext(model, users, contents, cutoff)
    assert all(len(n) == 1 for n in one_hop.batch.num_sampled_edges.values())
    at = {t: torch.full((n.numel(),), cutoff, dtype=torch.int64)
          for t, n in (("user", users), ("content", contents))}
    full = engine.sampler.sample({"user": (users, at["user"]), "content": (contents, at["content"])},
                                 generator=torch.Generator().manual_seed(0))
    assert engine.sampler.num_hops == 2 and sum(map(sum, full.num_sampled_edges.values())) > \
        sum(map(sum, one_hop.batch.num_sampled_edges.values()))
    two_hop = PairContext.of_sample(engine.model, full, engine.features)
    _, initial, codes = engine.model.states(two_hop.batch, engine.features)  # message passing
    user_index = torch.arange(12).repeat_interleave(30)
    content_index = torch.arange(30).repeat(12)
    generator = torch.Generator().manual_seed(3)
    u = torch.randn(user_index.numel(), engine.model.cfg.hidden_dim, generator=generator)
    c = torch.randn(user_index.numel(), engine.model.cfg.hidden_dim, generator=generator)
    with torch.no_grad():
        ours = one_hop.summaries(u, c, user_index, content_index)
        theirs = engine.model.summaries(u, c, two_hop.batch.seed_local["user"][user_index],
                                        two_hop.batch.seed_local["content"][content_index],
                                        two_hop.batch, initial, codes)
    assert len(ours) == 2 and any(float(s.abs().sum()) > 0 for s in ours)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
