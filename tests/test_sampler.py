"""Tests for the temporal CSR and the temporal neighbour sampler.

Hand-built graphs are small enough to check by eye; hypothesis generates random small
temporal heterogeneous graphs (three forward relations plus their reverses, times drawn
from a narrow range so that ties with seed times are frequent) and compares the sampler
against invariants and against a slow pure-Python reference.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.graph import EdgeType, TemporalCSR, TemporalHeteroGraph, add_reverse
from trainer.sampler import SampledSubgraph, TemporalNeighborSampler

IMPRESSED: EdgeType = ("user", "impressed", "content")
CLICKED: EdgeType = ("user", "clicked", "content")
OF_BRAND: EdgeType = ("content", "of_brand", "brand")
REV_IMPRESSED: EdgeType = ("content", "rev_impressed", "user")
REV_CLICKED: EdgeType = ("content", "rev_clicked", "user")
FORWARD = (IMPRESSED, CLICKED, OF_BRAND)
SAMPLING_MODES = [("most_recent", False), ("uniform", False), ("uniform", True)]


def _tensor(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _graph(num_nodes: dict[str, int],
           edges: dict[EdgeType, list[tuple[int, int, int]]],
           weights: dict[EdgeType, float] | None = None,
           edge_weights: dict[EdgeType, list[float]] | None = None) -> TemporalHeteroGraph:
    """Graph from ``(src, dst, time)`` lists per forward relation, reverses added;
    ``edge_weights`` gives relations a per-edge ``weight`` attribute, in list order."""
    csr = {}
    for edge_type, triples in edges.items():
        src, dst, time = (list(column) for column in zip(*triples, strict=True)) if triples \
            else ([], [], [])
        attrs = ({"weight": torch.tensor(edge_weights[edge_type], dtype=torch.float32)}
                 if edge_weights and edge_type in edge_weights else None)
        csr[edge_type] = TemporalCSR.from_edges(
            _tensor(src), _tensor(dst), _tensor(time), num_nodes[edge_type[2]],
            weight=(weights or {}).get(edge_type, 1.0), edge_attr=attrs)
    return add_reverse(TemporalHeteroGraph(num_nodes=num_nodes, csr=csr))


def _seeds(node_type: str, pairs: list[tuple[int, int]]
           ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {node_type: (_tensor([node for node, _ in pairs]),
                        _tensor([time for _, time in pairs]))}


def _homepage_graph() -> TemporalHeteroGraph:
    """Four users, five content items, two brands.

    User 0's history: impressed content 0 @ 10, 1 @ 20, 3 @ 40, 2 @ 100 (the seed
    impression) and clicked content 1 @ 25, 2 @ 100 (the seed's own click).
    """
    return _graph(
        {"user": 4, "content": 5, "brand": 2},
        {
            IMPRESSED: [(0, 0, 10), (0, 1, 20), (0, 3, 40), (0, 2, 100), (1, 0, 5),
                        (1, 2, 50), (2, 1, 30), (2, 2, 99), (3, 4, 60), (1, 3, 120)],
            CLICKED: [(0, 1, 25), (0, 2, 100), (2, 2, 99)],
            OF_BRAND: [(0, 0, 1), (1, 0, 1), (2, 1, 1), (3, 1, 200), (4, 0, 1)],
        },
        weights={IMPRESSED: 1.0, CLICKED: 3.0, OF_BRAND: 0.5})


def _sample(graph: TemporalHeteroGraph, seeds, fanouts, strategy="most_recent",
            replace=False, seed=0, time_search="auto", weighted=False) -> SampledSubgraph:
    sampler = TemporalNeighborSampler(graph, fanouts, strategy=strategy, replace=replace,
                                      time_search=time_search, weighted=weighted)
    return sampler.sample(seeds, generator=torch.Generator().manual_seed(seed))


def _edge_rows(graph: TemporalHeteroGraph, out: SampledSubgraph, edge_type: EdgeType
               ) -> list[tuple[int, int, int, int]]:
    """Sampled edges as ``(edge_id, src node, dst node, root time)`` in global ids."""
    src_type, _, dst_type = edge_type
    src_local, dst_local = out.edge_index[edge_type].tolist()
    return [(edge_id, out.node[src_type][s].item(), out.node[dst_type][d].item(),
             out.node_time[dst_type][d].item())
            for edge_id, s, d in zip(out.edge_id[edge_type].tolist(), src_local, dst_local,
                                     strict=True)]


def reference_most_recent(graph: TemporalHeteroGraph, seeds, fanouts):
    """Slow per-seed Python reference of the sampler's semantics for most_recent.

    Returns:
        ``(rows, rows_per_hop, edges)``: per node type the set of ``(node, root time)``
        rows, per node type the number of rows added at each hop, and the sorted list
        of ``(edge type, edge_id, src node, dst node, root time)``.
    """
    num_hops = len(next(iter(fanouts.values())))
    rows = {node_type: set() for node_type in graph.num_nodes}
    rows_per_hop = {node_type: [0] * (num_hops + 1) for node_type in graph.num_nodes}
    frontier = {node_type: set() for node_type in graph.num_nodes}
    for node_type, (node, time) in seeds.items():
        frontier[node_type] = set(zip(node.tolist(), time.tolist(), strict=True))
        rows[node_type] |= frontier[node_type]
        rows_per_hop[node_type][0] = len(frontier[node_type])
    edges = []
    for hop in range(num_hops):
        new = {node_type: set() for node_type in graph.num_nodes}
        for edge_type, csr in graph.csr.items():
            src_type, _, dst_type = edge_type
            fanout = fanouts[edge_type][hop]
            for node, root_time in sorted(frontier[dst_type]):
                row = range(csr.indptr[node].item(), csr.indptr[node + 1].item())
                visible = [e for e in row if csr.edge_time[e].item() < root_time]
                chosen = visible if fanout < 0 else visible[max(len(visible) - fanout, 0):] \
                    if fanout else []
                for e in chosen:
                    src = csr.neighbor[e].item()
                    edges.append((edge_type, e, src, node, root_time))
                    if (src, root_time) not in rows[src_type]:
                        new[src_type].add((src, root_time))
        for node_type in graph.num_nodes:
            rows[node_type] |= new[node_type]
            rows_per_hop[node_type][hop + 1] = len(new[node_type])
        frontier = new
    return rows, rows_per_hop, sorted(edges)


def check_invariants(graph: TemporalHeteroGraph, seeds, fanouts, out: SampledSubgraph,
                     strategy: str, replace: bool) -> None:
    """Asserts everything a sample must satisfy whatever the random draws were."""
    num_hops = len(next(iter(fanouts.values())))
    seed_times = {t for _, times in seeds.values() for t in times.tolist()}
    # Rows: distinct (node, root time) pairs, root times are seed times, seeds map back.
    for node_type in graph.num_nodes:
        pairs = list(zip(out.node[node_type].tolist(), out.node_time[node_type].tolist(),
                         strict=True))
        assert len(pairs) == len(set(pairs)), f"duplicate rows in {node_type}"
        assert {t for _, t in pairs} <= seed_times
        assert sum(out.num_sampled_nodes[node_type]) == len(pairs)
        assert len(out.num_sampled_nodes[node_type]) == num_hops + 1
    for node_type, (node, time) in seeds.items():
        local = out.seed_local[node_type]
        assert torch.equal(out.node[node_type][local], node)
        assert torch.equal(out.node_time[node_type][local], time)
    # Hop at which each row was added; rows added before the last hop get expanded.
    added_at = {node_type: [hop for hop, count in enumerate(out.num_sampled_nodes[node_type])
                            for _ in range(count)]
                for node_type in graph.num_nodes}
    for edge_type, csr in graph.csr.items():
        src_type, _, dst_type = edge_type
        src_local, dst_local = out.edge_index[edge_type]
        edge_id = out.edge_id[edge_type]
        root_time = out.node_time[dst_type][dst_local]
        dst_node = out.node[dst_type][dst_local]
        assert torch.equal(out.node[src_type][src_local], csr.neighbor[edge_id])
        assert bool((csr.indptr[dst_node] <= edge_id).all())
        assert bool((edge_id < csr.indptr[dst_node + 1]).all())
        assert torch.equal(out.edge_time[edge_type], csr.edge_time[edge_id])
        # The no-leak rule, at every hop: strictly before the root seed's time.
        assert bool((out.edge_time[edge_type] < root_time).all())
        assert torch.equal(out.node_time[src_type][src_local], root_time)
        assert torch.equal(out.edge_delta_t[edge_type], root_time - csr.edge_time[edge_id])
        assert bool((out.edge_delta_t[edge_type] > 0).all())
        assert bool((out.edge_weight[edge_type] == csr.weight).all())
        assert sum(out.num_sampled_edges[edge_type]) == edge_id.numel()
        # Per destination row: how many edges, and no repeats without replacement.
        per_row = {}
        for d, e in zip(dst_local.tolist(), edge_id.tolist(), strict=True):
            per_row.setdefault(d, []).append(e)
        for d in range(out.node[dst_type].numel()):
            drawn = per_row.get(d, [])
            hop = added_at[dst_type][d]
            if hop == num_hops:
                assert not drawn, "a row added at the last hop must not be expanded"
                continue
            node, time = out.node[dst_type][d].item(), out.node_time[dst_type][d].item()
            row = range(csr.indptr[node].item(), csr.indptr[node + 1].item())
            visible = [e for e in row if csr.edge_time[e].item() < time]
            fanout = fanouts[edge_type][hop]
            if fanout < 0:
                expected = len(visible)
            elif replace:
                expected = fanout if visible else 0
            else:
                expected = min(fanout, len(visible))
            assert len(drawn) == expected
            assert set(drawn) <= set(visible)
            if not replace:
                assert len(set(drawn)) == len(drawn), "edge repeated without replacement"
            if strategy == "most_recent":
                assert sorted(drawn) == visible[len(visible) - len(drawn):]


# ----------------------------------------------------------------------------- graph


def test_from_edges_sorts_rows_by_destination_then_time():
    csr = TemporalCSR.from_edges(_tensor([7, 8, 9, 6]), _tensor([1, 0, 1, 1]),
                                 _tensor([30, 5, 10, 10]), num_dst=3)
    assert csr.indptr.tolist() == [0, 1, 4, 4]
    assert csr.neighbor.tolist() == [8, 6, 9, 7]  # equal times by source id (6, 9)
    assert csr.edge_time.tolist() == [5, 10, 10, 30]
    csr.validate()


def test_from_edges_gives_one_csr_whatever_the_input_order():
    """Edges read from other day folders or files, in another order, give the same CSR,
    so sampling does not depend on how the store was laid out."""
    gen = torch.Generator().manual_seed(0)
    src, dst = torch.randint(5, (60,), generator=gen), torch.randint(4, (60,), generator=gen)
    time = torch.randint(3, (60,), generator=gen)  # many ties
    a = TemporalCSR.from_edges(src, dst, time, num_dst=4)
    perm = torch.randperm(60, generator=gen)
    b = TemporalCSR.from_edges(src[perm], dst[perm], time[perm], num_dst=4)
    assert torch.equal(a.neighbor, b.neighbor) and torch.equal(a.edge_time, b.edge_time)


def test_validate_rejects_a_row_out_of_time_order():
    csr = TemporalCSR(indptr=_tensor([0, 2]), neighbor=_tensor([0, 1]),
                      edge_time=_tensor([5, 4]))
    with pytest.raises(ValueError, match="sorted by edge_time"):
        csr.validate()


def test_add_reverse_indexes_by_the_original_source():
    graph = _homepage_graph()
    reverse = graph.csr[REV_CLICKED]
    # User 0 clicked content 1 @ 25 and content 2 @ 100; user 2 clicked content 2 @ 99.
    assert reverse.indptr.tolist() == [0, 2, 2, 3, 3]
    assert reverse.neighbor.tolist() == [1, 2, 2]
    assert reverse.edge_time.tolist() == [25, 100, 99]
    assert reverse.weight == 3.0
    assert set(graph.edge_types) == set(FORWARD) | {
        ("content", "rev_impressed", "user"), REV_CLICKED, ("brand", "rev_of_brand",
                                                            "content")}
    with pytest.raises(ValueError, match="already exists"):
        add_reverse(graph)


# --------------------------------------------------------------- hand-built answers


@pytest.mark.parametrize("strategy,replace", SAMPLING_MODES)
def test_seed_impression_and_its_click_are_never_visible(strategy, replace):
    graph = _homepage_graph()
    fanouts = [-1] * 4 if not replace else [8] * 4
    out = _sample(graph, _seeds("user", [(0, 100)]), fanouts, strategy, replace)
    for edge_type in graph.edge_types:
        assert 100 not in out.edge_time[edge_type].tolist(), edge_type
    hop1 = _edge_rows(graph, out, REV_IMPRESSED)
    hop1_content = {src for _, src, dst, _ in hop1 if dst == 0}
    # Impressions of content 0, 1, 3 (@10, 20, 40) are visible; content 2 @ 100 is not.
    assert hop1_content == {0, 1, 3}
    clicked = {src for _, src, dst, _ in _edge_rows(graph, out, REV_CLICKED) if dst == 0}
    assert clicked == {1}
    # Content 2 is reached at hop 3 (user 1 impressed it @ 50) and expanded at hop 4,
    # only through earlier edges: user 2's impression @ 99 is visible, user 0's @ 100
    # (the seed impression, seen from the content side) is not.
    impressers_of_2 = {src for _, src, dst, _ in _edge_rows(graph, out, IMPRESSED)
                       if dst == 2}
    assert impressers_of_2 <= {1, 2} and (strategy != "most_recent" or impressers_of_2
                                          == {1, 2})


def test_most_recent_on_the_homepage_graph_by_eye():
    graph = _homepage_graph()
    out = _sample(graph, _seeds("user", [(0, 100)]), [2, 1])
    # Hop 1, user 0 @ 100: the two latest impressions before 100 are content 1 @ 20
    # and content 3 @ 40; the only earlier click is content 1 @ 25.
    assert sorted((src, time) for (_, src, _, _), time in zip(
        _edge_rows(graph, out, REV_IMPRESSED), out.edge_time[REV_IMPRESSED].tolist(),
        strict=True)) == [(1, 20), (3, 40)]
    assert [src for _, src, _, _ in _edge_rows(graph, out, REV_CLICKED)] == [1]
    # Hop 2 expands content 1 and 3 once each (content 1 was reached twice), all at
    # root time 100: content 1's latest impression < 100 is user 2 @ 30; content 3's
    # is user 0 @ 40 (user 1 @ 120 is in the future); content 1 -> brand 0 @ 1;
    # content 3 -> brand 1 @ 200 is in the future.
    assert out.node["content"].tolist() == [1, 3]
    assert sorted((src, dst) for _, src, dst, _ in _edge_rows(graph, out, IMPRESSED)) \
        == [(0, 3), (2, 1)]
    assert [(src, dst) for _, src, dst, _ in _edge_rows(graph, out, ("brand",
                                                                     "rev_of_brand",
                                                                     "content"))] \
        == [(0, 1)]
    # User 0 met again at hop 2 is the seed row itself, not a new row.
    assert out.node["user"].tolist() == [0, 2]
    assert out.num_sampled_nodes["user"] == [1, 0, 1]
    assert bool((out.node_time["user"] == 100).all())
    edge_index = out.edge_index[IMPRESSED]
    assert out.node["user"][edge_index[0]].tolist().count(0) == 1


def test_dedup_is_per_node_and_root_time():
    graph = _homepage_graph()
    out = _sample(graph, _seeds("user", [(0, 100), (0, 100), (0, 30), (1, 100)]), [1])
    # Same user and time -> one row; same user at another time -> another row.
    assert out.seed_local["user"].tolist() == [0, 0, 1, 2]
    assert list(zip(out.node["user"].tolist(), out.node_time["user"].tolist(),
                    strict=True)) == [(0, 100), (0, 30), (1, 100)]
    # User 0 @ 30 sees only content 0 @ 10 and 1 @ 20; @ 100 the latest is content 3.
    by_root = {(src, root) for _, src, dst, root in _edge_rows(graph, out, REV_IMPRESSED)
               if dst == 0}
    assert by_root == {(1, 30), (3, 100)}


def test_uniform_without_replacement_returns_all_when_fewer_visible_than_fanout():
    graph = _homepage_graph()
    out = _sample(graph, _seeds("user", [(0, 100)]), [10], "uniform", seed=3)
    assert sorted(out.edge_time[REV_IMPRESSED].tolist()) == [10, 20, 40]
    assert sorted(out.edge_time[REV_CLICKED].tolist()) == [25]


def test_uniform_with_replacement_draws_fanout_edges_from_the_visible_ones():
    graph = _homepage_graph()
    out = _sample(graph, _seeds("user", [(0, 100), (3, 10)]), [7], "uniform",
                  replace=True, seed=3)
    times = out.edge_time[REV_IMPRESSED].tolist()
    assert len(times) == 7 and set(times) <= {10, 20, 40}  # user 3 has nothing < 10


def _star_graph(num_visible: int, span: int) -> TemporalHeteroGraph:
    """User 0 impressed contents 0..num_visible-1 at span * (i+1), then more later."""
    num_content = num_visible + 2
    impressions = [(0, i, span * (i + 1)) for i in range(num_content)]
    return _graph({"user": 1, "content": num_content, "brand": 1},
                  {IMPRESSED: impressions, CLICKED: [], OF_BRAND: []})


def _chi_square_p_value(observed: list[int], expected: list[float]) -> float:
    statistic = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    dof = len(observed) - 1
    return torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                   torch.tensor(statistic / 2, dtype=torch.float64)).item()


def _draws_per_root(out: SampledSubgraph) -> list[list[int]]:
    dst_local = out.edge_index[REV_IMPRESSED][1].tolist()
    per_root: dict[int, list[int]] = {}
    for d, e in zip(dst_local, out.edge_id[REV_IMPRESSED].tolist(), strict=True):
        per_root.setdefault(d, []).append(e)
    return list(per_root.values())


def test_uniform_without_replacement_matches_the_exact_subset_distribution():
    """Chi-square goodness of fit of the drawn 2-subsets against uniform.

    User 0 has 6 visible impressions (at 1000 .. 6000) and two invisible ones (at 7000
    and 8000). Seeds are user 0 at 1000 distinct times in (6000, 7000], so each seed is
    its own row with the same 6 visible edges: 1000 independent draws of fanout 2 in one
    call. Under the brute-force distribution every one of the C(6, 2) = 15 subsets has
    probability 1/15; the test fails if the chi-square p-value (14 degrees of freedom)
    is below 0.001. The generator seed is fixed, so the test is deterministic.
    """
    graph = _star_graph(6, 1000)
    seeds = _seeds("user", [(0, 6001 + i) for i in range(1000)])
    fanouts = {edge_type: [0] for edge_type in graph.edge_types} | {REV_IMPRESSED: [2]}
    out = _sample(graph, seeds, fanouts, "uniform", seed=11)
    draws = _draws_per_root(out)
    assert len(draws) == 1000 and all(len(set(d)) == 2 for d in draws)
    counts = Counter(tuple(sorted(d)) for d in draws)
    subsets = list(itertools.combinations(range(6), 2))
    assert set(counts) <= set(subsets)
    observed = [counts[s] for s in subsets]
    assert _chi_square_p_value(observed, [1000 / 15] * 15) > 0.001


def test_uniform_with_replacement_matches_the_uniform_edge_distribution():
    """Chi-square goodness of fit of edge counts under replacement.

    Same star graph as above with 5 visible edges, 1000 seed rows, fanout 3 with
    replacement: 3000 independent uniform draws over 5 edges; expected 600 per edge,
    chi-square with 4 degrees of freedom, fail if p < 0.001. Also checks that repeats do
    happen (a without-replacement bug would never repeat).
    """
    graph = _star_graph(5, 1000)
    seeds = _seeds("user", [(0, 5001 + i) for i in range(1000)])
    fanouts = {edge_type: [0] for edge_type in graph.edge_types} | {REV_IMPRESSED: [3]}
    out = _sample(graph, seeds, fanouts, "uniform", replace=True, seed=5)
    counts = Counter(out.edge_id[REV_IMPRESSED].tolist())
    assert set(counts) <= set(range(5))
    assert _chi_square_p_value([counts[e] for e in range(5)], [600.0] * 5) > 0.001
    assert any(len(set(d)) < len(d) for d in _draws_per_root(out))


def _weighted_star(times: list[int], weights: list[float]) -> TemporalHeteroGraph:
    """User 0 impressed content ``i`` at ``times[i]`` with edge weight ``weights[i]``."""
    impressions = [(0, i, t) for i, t in enumerate(times)]
    return _graph({"user": 1, "content": len(times), "brand": 1},
                  {IMPRESSED: impressions, CLICKED: [], OF_BRAND: []},
                  edge_weights={IMPRESSED: weights, CLICKED: [], OF_BRAND: []})


def _one_hop(edge_type: EdgeType, graph: TemporalHeteroGraph, fanout: int) -> dict:
    return {et: [0] for et in graph.edge_types} | {edge_type: [fanout]}


def test_weighted_sampling_excludes_the_seed_second_and_later_edges_however_heavy():
    """The tie case: an edge at exactly the seed time, and one after it, each weighing
    10,000 times the visible ones, are never drawn; the two visible edges always are
    (fanout 2 of 2 visible) and, at fanout 1, the heavier visible one wins ~9 in 10."""
    graph = _weighted_star([10, 20, 30, 40], [1.0, 9.0, 1e4, 1e4])
    seeds = _seeds("user", [(0, 30)])
    for fanout in (1, 2, 3):
        for seed in range(200):
            out = _sample(graph, seeds, _one_hop(REV_IMPRESSED, graph, fanout), "uniform",
                          seed=seed, weighted=True)
            drawn = out.edge_id[REV_IMPRESSED].tolist()
            assert set(drawn) <= {0, 1}, (fanout, seed, drawn)
            assert len(drawn) == min(fanout, 2)
    many = _seeds("user", [(0, 21 + i % 10) for i in range(10)])  # 10 roots, all > 20
    heavy = 0
    for seed in range(100):
        out = _sample(graph, many, _one_hop(REV_IMPRESSED, graph, 1), "uniform", seed=seed,
                      weighted=True)
        assert set(out.edge_time[REV_IMPRESSED].tolist()) <= {10, 20}
        heavy += out.edge_id[REV_IMPRESSED].tolist().count(1)
    assert 800 <= heavy <= 980  # expected 900 of 1000 draws


def test_weighted_sampling_matches_successive_draws_without_replacement():
    """Chi-square of the drawn 2-subsets of 4 visible edges weighing 1, 2, 3, 6 against
    the exact law of two successive weighted draws without replacement (p > 0.001)."""
    weights = [1.0, 2.0, 3.0, 6.0]
    graph = _weighted_star([1000, 2000, 3000, 4000, 5000], [*weights, 50.0])
    seeds = _seeds("user", [(0, 4001 + i) for i in range(999)])  # edge 4 @ 5000 invisible
    out = _sample(graph, seeds, _one_hop(REV_IMPRESSED, graph, 2), "uniform", seed=3,
                  weighted=True)
    draws = _draws_per_root(out)
    assert len(draws) == 999 and all(len(set(d)) == 2 for d in draws)
    total = sum(weights)
    law = {}
    for a, b in itertools.permutations(range(4), 2):
        pair = tuple(sorted((a, b)))
        law[pair] = law.get(pair, 0.0) + weights[a] / total * weights[b] / (total - weights[a])
    counts = Counter(tuple(sorted(d)) for d in draws)
    assert set(counts) <= set(law)
    pairs = sorted(law)
    assert _chi_square_p_value([counts[p] for p in pairs], [999 * law[p] for p in pairs]) > 0.001


def test_weighted_sampling_with_equal_weights_draws_as_uniform_and_zero_weights_last():
    graph = _weighted_star([1, 2, 3, 4, 5, 6], [2.0] * 6)
    plain = _graph({"user": 1, "content": 6, "brand": 1},
                   {IMPRESSED: [(0, i, i + 1) for i in range(6)], CLICKED: [], OF_BRAND: []})
    seeds = _seeds("user", [(0, 7 + i) for i in range(30)])
    fanouts = _one_hop(REV_IMPRESSED, graph, 2)
    weighted = _sample(graph, seeds, fanouts, "uniform", seed=4, weighted=True)
    uniform = _sample(plain, seeds, fanouts, "uniform", seed=4)
    assert torch.equal(weighted.edge_id[REV_IMPRESSED], uniform.edge_id[REV_IMPRESSED])
    zeros = _weighted_star([1, 2, 3, 4, 5, 6], [0.0, 1.0, 0.0, 5.0, 0.0, 0.0])
    out = _sample(zeros, seeds, fanouts, "uniform", seed=4, weighted=True)
    assert all(set(d) == {1, 3} for d in _draws_per_root(out))


def test_weighted_sampling_settings_are_checked():
    graph = _weighted_star([1, 2], [1.0, 1.0])
    with pytest.raises(ValueError, match="weighted"):
        TemporalNeighborSampler(graph, [1], strategy="most_recent", weighted=True)
    with pytest.raises(ValueError, match="weighted"):
        TemporalNeighborSampler(graph, [1], replace=True, weighted=True)
    with pytest.raises(ValueError, match=">= 0"):
        TemporalNeighborSampler(_weighted_star([1, 2], [1.0, -1.0]), [1], weighted=True)


def test_same_generator_state_gives_the_same_sample_and_another_seed_does_not():
    graph = _star_graph(20, 10)
    seeds = _seeds("user", [(0, 205 + i) for i in range(50)])
    first = _sample(graph, seeds, [3, 2], "uniform", seed=7)
    again = _sample(graph, seeds, [3, 2], "uniform", seed=7)
    other = _sample(graph, seeds, [3, 2], "uniform", seed=8)
    for edge_type in graph.edge_types:
        assert torch.equal(first.edge_index[edge_type], again.edge_index[edge_type])
        assert torch.equal(first.edge_id[edge_type], again.edge_id[edge_type])
    for node_type in graph.num_nodes:
        assert torch.equal(first.node[node_type], again.node[node_type])
    assert not torch.equal(first.edge_id[REV_IMPRESSED], other.edge_id[REV_IMPRESSED])


def test_to_hetero_data_carries_every_field():
    graph = _homepage_graph()
    out = _sample(graph, _seeds("user", [(0, 100), (2, 100)]), [2, 2])
    data = out.to_hetero_data()
    data.validate()
    assert set(data.node_types) == set(graph.num_nodes)
    assert set(data.edge_types) == set(graph.edge_types)
    assert torch.equal(data["user"].n_id, out.node["user"])
    assert torch.equal(data["user"].seed_local, torch.tensor([0, 1]))
    assert data["content"].num_nodes == out.node["content"].numel()
    assert torch.equal(data[CLICKED].edge_weight,
                       torch.full_like(out.edge_weight[CLICKED], 3.0))
    assert torch.equal(data[IMPRESSED].edge_delta_t, out.edge_delta_t[IMPRESSED])
    assert data.num_sampled_nodes["user"] == out.num_sampled_nodes["user"]


def test_edge_attributes_are_sliced_by_edge_id():
    csr = TemporalCSR.from_edges(_tensor([0, 1, 2]), _tensor([0, 0, 0]),
                                 _tensor([3, 1, 2]), num_dst=1,
                                 edge_attr={"dwell_s": torch.tensor([30.0, 10.0, 20.0])})
    graph = TemporalHeteroGraph({"user": 3, "content": 1}, {("user", "impressed",
                                                            "content"): csr})
    out = _sample(graph, _seeds("content", [(0, 3)]), [5])
    edge_type = ("user", "impressed", "content")
    assert sorted(out.edge_attr[edge_type]["dwell_s"].tolist()) == [10.0, 20.0]
    assert torch.equal(out.edge_attr[edge_type]["dwell_s"],
                       csr.edge_attr["dwell_s"][out.edge_id[edge_type]])


def test_invalid_configurations_are_rejected():
    graph = _homepage_graph()
    with pytest.raises(ValueError, match="Generator"):
        TemporalNeighborSampler(graph, [2]).sample(_seeds("user", [(0, 1)]))
    with pytest.raises(ValueError, match="replace"):
        TemporalNeighborSampler(graph, [2], strategy="most_recent", replace=True)
    with pytest.raises(ValueError, match="missing"):
        TemporalNeighborSampler(graph, {IMPRESSED: [2]})
    with pytest.raises(ValueError, match="out of range"):
        TemporalNeighborSampler(graph, [2], strategy="most_recent").sample(
            _seeds("user", [(9, 1)]))


# ----------------------------------------------------------------------- properties


@st.composite
def temporal_graphs(draw):
    """Random small graphs: 3 node types, 3 forward relations + reverses, tied times.

    Times are ``base + scale * small_int``; with ``scale = 2**59`` the composite search
    key would overflow int64, so ``time_search="auto"`` must fall back to bisection.
    """
    num_nodes = {"user": draw(st.integers(1, 5)), "content": draw(st.integers(1, 5)),
                 "brand": draw(st.integers(1, 3))}
    base = draw(st.sampled_from([0, 1_700_000_000, -(10**12)]))
    scale = draw(st.sampled_from([1, 1, 7, 2**59]))
    edges = {}
    for src_type, relation, dst_type in FORWARD:
        triples = draw(st.lists(st.tuples(st.integers(0, num_nodes[src_type] - 1),
                                          st.integers(0, num_nodes[dst_type] - 1),
                                          st.integers(0, 7)), max_size=14))
        edges[(src_type, relation, dst_type)] = [(s, d, base + scale * t)
                                                 for s, d, t in triples]
    weights = {edge_type: draw(st.sampled_from([0.5, 1.0, 2.0])) for edge_type in FORWARD}
    graph = _graph(num_nodes, edges, weights)
    seeds = {}
    for node_type in draw(st.sampled_from([["user"], ["user", "content"], ["brand"]])):
        pairs = draw(st.lists(st.tuples(st.integers(0, num_nodes[node_type] - 1),
                                        st.integers(0, 8)), min_size=1, max_size=5))
        seeds.update(_seeds(node_type, [(n, base + scale * t) for n, t in pairs]))
    num_hops = draw(st.integers(1, 3))
    fanouts = {edge_type: draw(st.lists(st.integers(-1, 3), min_size=num_hops,
                                        max_size=num_hops))
               for edge_type in graph.edge_types}
    return graph, seeds, fanouts


PROPERTY_SETTINGS = settings(max_examples=150, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(case=temporal_graphs(), mode=st.sampled_from(SAMPLING_MODES),
       time_search=st.sampled_from(["auto", "bisect"]), seed=st.integers(0, 2**31))
def test_no_sampled_edge_is_at_or_after_its_root_seed_time(case, mode, time_search, seed):
    graph, seeds, fanouts = case
    strategy, replace = mode
    out = _sample(graph, seeds, fanouts, strategy, replace, seed, time_search)
    check_invariants(graph, seeds, fanouts, out, strategy, replace)


@PROPERTY_SETTINGS
@given(case=temporal_graphs(), time_search=st.sampled_from(["auto", "bisect"]),
       seed=st.integers(0, 2**31), data=st.data())
def test_weighted_sampling_never_draws_an_edge_at_or_after_its_root_seed_time(
        case, time_search, seed, data):
    """The no-leak rule under weighted draws, with seed times tied to edge times and
    random per-edge weights (zeros included) on every relation."""
    graph, seeds, fanouts = case
    weight_values = st.sampled_from([0.0, 0.1, 1.0, 3.0, 1000.0])
    csr = {}
    for edge_type, relation in graph.csr.items():
        if edge_type[1].startswith("rev_"):
            continue
        weight = torch.tensor(data.draw(st.lists(weight_values, min_size=relation.num_edges,
                                                 max_size=relation.num_edges)),
                              dtype=torch.float32)
        csr[edge_type] = TemporalCSR(relation.indptr, relation.neighbor, relation.edge_time,
                                     relation.weight, {"weight": weight})
    weighted_graph = add_reverse(TemporalHeteroGraph(graph.num_nodes, csr))
    out = _sample(weighted_graph, seeds, fanouts, "uniform", False, seed, time_search,
                  weighted=True)
    check_invariants(weighted_graph, seeds, fanouts, out, "uniform", False)


@PROPERTY_SETTINGS
@given(case=temporal_graphs(), time_search=st.sampled_from(["auto", "bisect"]))
def test_most_recent_equals_the_brute_force_reference_at_every_hop(case, time_search):
    graph, seeds, fanouts = case
    out = _sample(graph, seeds, fanouts, "most_recent", time_search=time_search)
    rows, rows_per_hop, edges = reference_most_recent(graph, seeds, fanouts)
    for node_type in graph.num_nodes:
        assert set(zip(out.node[node_type].tolist(), out.node_time[node_type].tolist(),
                       strict=True)) == rows[node_type]
        assert out.num_sampled_nodes[node_type] == rows_per_hop[node_type]
    sampled = sorted((edge_type, *row) for edge_type in graph.edge_types
                     for row in _edge_rows(graph, out, edge_type))
    assert sampled == edges


def test_bisection_fallback_is_chosen_when_the_composite_key_would_overflow():
    graph = _graph({"user": 2, "content": 2, "brand": 1},
                   {IMPRESSED: [(0, 0, -(2**62)), (1, 0, 2**62), (1, 1, 0)],
                    CLICKED: [], OF_BRAND: []})
    with pytest.raises(ValueError, match="overflow"):
        TemporalNeighborSampler(graph, [1], time_search="composite")
    out = _sample(graph, _seeds("content", [(0, 2**62), (0, 2**62 + 1)]), [-1])
    assert sorted(_edge_rows(graph, out, IMPRESSED)) == [
        (0, 0, 0, 2**62), (0, 0, 0, 2**62 + 1), (1, 1, 0, 2**62 + 1)]


@pytest.mark.parametrize("time_search", ["composite", "bisect"])
def test_visible_edges_match_a_linear_scan_on_a_larger_graph(time_search):
    """Rows long enough to span many search blocks, times with many ties."""
    generator = torch.Generator().manual_seed(0)
    num_edges, num_content = 3000, 30
    dst = (torch.rand(num_edges, generator=generator) ** 3 * num_content).long()
    src = torch.randint(0, 40, (num_edges,), generator=generator)
    time = torch.randint(0, 50, (num_edges,), generator=generator)
    csr = TemporalCSR.from_edges(src, dst, time, num_content)
    graph = TemporalHeteroGraph({"user": 40, "content": num_content}, {IMPRESSED: csr})
    node = torch.randint(0, num_content, (300,), generator=generator)
    seed_time = torch.randint(-1, 52, (300,), generator=generator)
    out = _sample(graph, {"content": (node, seed_time)}, [-1], time_search=time_search)
    edge_dst = csr.edge_dst()
    dst_local = out.edge_index[IMPRESSED][1]
    for local in range(out.node["content"].numel()):
        row_node, root = out.node["content"][local], out.node_time["content"][local]
        expected = torch.nonzero((edge_dst == row_node) & (csr.edge_time < root)).view(-1)
        assert torch.equal(out.edge_id[IMPRESSED][dst_local == local], expected)


# ------------------------------------------------------------------------------ gpu


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_most_recent_equals_cpu():
    graph = _homepage_graph()
    seeds = _seeds("user", [(0, 100), (1, 130), (2, 99), (0, 30)])
    cpu = _sample(graph, seeds, [2, 2, 2])
    cuda_seeds = {t: (n.cuda(), s.cuda()) for t, (n, s) in seeds.items()}
    sampler = TemporalNeighborSampler(graph.to("cuda"), [2, 2, 2], strategy="most_recent")
    gpu = sampler.sample(cuda_seeds)
    for node_type in graph.num_nodes:
        assert torch.equal(gpu.node[node_type].cpu(), cpu.node[node_type])
        assert torch.equal(gpu.node_time[node_type].cpu(), cpu.node_time[node_type])
    for edge_type in graph.edge_types:
        assert torch.equal(gpu.edge_index[edge_type].cpu(), cpu.edge_index[edge_type])
        assert torch.equal(gpu.edge_id[edge_type].cpu(), cpu.edge_id[edge_type])
    uniform = TemporalNeighborSampler(graph.to("cuda"), [2, 2], strategy="uniform")
    out = uniform.sample(cuda_seeds, generator=torch.Generator("cuda").manual_seed(0))
    for edge_type in graph.edge_types:
        src_type, _, dst_type = edge_type
        root_time = out.node_time[dst_type][out.edge_index[edge_type][1]]
        assert bool((out.edge_time[edge_type] < root_time).all())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_weighted_sampling_keeps_the_no_leak_rule_and_the_weights():
    graph = _weighted_star([10, 20, 30, 40], [1.0, 9.0, 1e4, 1e4]).to("cuda")
    seeds = {"user": (torch.zeros(500, dtype=torch.int64, device="cuda"),
                      torch.full((500,), 30, dtype=torch.int64, device="cuda"))}
    seeds["user"] = (seeds["user"][0], seeds["user"][1] + torch.arange(500, device="cuda") % 10)
    sampler = TemporalNeighborSampler(graph, _one_hop(REV_IMPRESSED, graph, 1), weighted=True)
    out = sampler.sample(seeds, generator=torch.Generator("cuda").manual_seed(0))
    root_time = out.node_time["user"][out.edge_index[REV_IMPRESSED][1]]
    assert bool((out.edge_time[REV_IMPRESSED] < root_time).all())
    # roots 30 see edges 0, 1 (weights 1 and 9); later roots also see edge 2 (1e4)
    at_30 = root_time == 30
    assert set(out.edge_id[REV_IMPRESSED][at_30].tolist()) <= {0, 1}


def test_activity_count_columns_do_not_depend_on_the_graph_order():
    """A shard lists relations in another order than a loaded store; the model's count
    columns (trained on shards, scored on the store) must mean the same relations."""
    from trainer.sampler import count_relations

    edge_types = [("user", "clicked", "content"), ("brand", "rev_of", "content"),
                  ("user", "impressed", "content"), ("content", "rev_clicked", "user")]
    assert count_relations(edge_types, "content") == count_relations(edge_types[::-1], "content")
    assert count_relations(edge_types, "user") == [("content", "rev_clicked", "user")]


def test_activity_counts_exclude_the_seed_second_and_include_the_window_start():
    """All-time and 24-hour counts see edges strictly before the seed: an edge at the
    seed's own second counts in neither, an edge exactly 24 hours earlier is in the
    24-hour column, one second more is not. Counting the seed's second in the 24-hour
    column (``count_before(time + 1) - count_before(time - window)``) fails here."""
    from trainer.sampler import ACTIVITY_WINDOW_S, count_relations

    t = 1_700_000_000
    times = [t - ACTIVITY_WINDOW_S - 1, t - ACTIVITY_WINDOW_S, t - 1, t, t, t + 5]
    csr = TemporalCSR.from_edges(_tensor([0, 1, 2, 3, 4, 0]), _tensor([0] * 6), _tensor(times),
                                 num_dst=2)
    graph = TemporalHeteroGraph(num_nodes={"content": 5, "user": 2},
                                csr={("content", "rev_clicked", "user"): csr})
    sampler = TemporalNeighborSampler(graph, [2])
    assert count_relations(graph.edge_types, "user") == [("content", "rev_clicked", "user")]
    counts = sampler.activity_counts("user", _tensor([0, 0, 1]), _tensor([t, t + 1, t]))
    assert counts.tolist() == [[3, 2], [5, 3], [0, 0]]
