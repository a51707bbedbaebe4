"""Partitioning algorithms: graph contract, METIS, coarsening, placement, quality metrics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from partitioning import (
    CoarsenedMetisPartitioner,
    MetisPartitioner,
    Partitioner,
    PartitionGraph,
    RandomPartitioner,
    balance,
    coarsen_graph,
    edge_cut_drift,
    edge_cut_fraction,
    fill_empty_parts,
    hash_part,
    place_new_nodes,
    quality_report,
    remote_lookups,
    validate_partition_book,
)
from partitioning.coarsen import max_cluster_weight_for
from partitioning.graph import normalized_vertex_weight
from partitioning.memory import PeakRssMonitor
from partitioning.metis import integer_edge_weights, integer_vertex_weights
from partitioning.quality import draw_seeds, sample_neighbours, sample_trees
from partitioning.refine import balance_caps, cut_weight, max_imbalance, part_loads, rebalance, refine
from partitioning.synthetic import planted_community_graph


def two_cliques(size: int = 5) -> PartitionGraph:
    """Two complete graphs on ``size`` nodes joined by the single edge (size-1, size)."""
    first = [(u, v) for u in range(size) for v in range(u + 1, size)]
    second = [(u + size, v + size) for u, v in first]
    edges = np.array(first + second + [(size - 1, size)])
    return PartitionGraph.from_coo(2 * size, edges[:, 0], edges[:, 1])


@pytest.fixture(scope="module")
def planted():
    return planted_community_graph(4_000, 40_000, 8, np.random.default_rng(7))


# --------------------------------------------------------------------------- graph contract


def test_from_coo_symmetrises_and_sums_duplicates_in_either_orientation():
    graph = PartitionGraph.from_coo(
        4, np.array([0, 1, 0, 2]), np.array([1, 0, 1, 3]), np.array([1.0, 2.0, 4.0, 0.5])
    )
    src, dst, weight = graph.edge_list()
    assert list(zip(src.tolist(), dst.tolist(), weight.tolist(), strict=True)) == [(0, 1, 7.0), (2, 3, 0.5)]
    assert graph.num_edges == 2
    assert graph.degrees().tolist() == [1, 1, 1, 1]
    assert graph.vertex_weights.shape == (4, 1)

    kept_max = PartitionGraph.from_coo(
        2, np.array([0, 1]), np.array([1, 0]), np.array([3.0, 2.0]), combine="max"
    )
    assert kept_max.edge_list()[2].tolist() == [3.0]


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=2, max_value=30).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(
                st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.integers(1, 9)).filter(
                    lambda e: e[0] != e[1]
                ),
                max_size=80,
            ),
        )
    )
)
def test_csr_is_symmetric_and_keeps_the_total_weight(case):
    num_nodes, rows = case
    edges = np.array(rows, dtype=np.int64).reshape(-1, 3)
    graph = PartitionGraph.from_coo(num_nodes, edges[:, 0], edges[:, 1], edges[:, 2].astype(float))
    dense = np.zeros((num_nodes, num_nodes))
    dense[graph.row_of_entry(), graph.indices] = graph.edge_weight
    assert np.array_equal(dense, dense.T)
    assert np.all(np.diag(dense) == 0)
    assert graph.edge_list()[2].sum() == pytest.approx(edges[:, 2].sum())
    for node in range(num_nodes):  # columns ascend within each row
        row = graph.indices[graph.indptr[node] : graph.indptr[node + 1]]
        assert np.all(np.diff(row) > 0)


@pytest.mark.parametrize(
    ("src", "dst", "weight", "message"),
    [
        ([0, 5], [1, 2], None, "dst|src"),
        ([0, -1], [1, 2], None, "src contains node id -1"),
        ([0, 1], [1, 7], None, "dst contains node id 7 outside"),
        ([0, 2], [1, 2], None, "self loops"),
        ([0, 1], [1, 2], [1.0, 0.0], "finite and > 0"),
        ([0, 1], [1, 2], [1.0, np.nan], "finite and > 0"),
    ],
)
def test_from_coo_rejects_bad_edges_with_a_clear_message(src, dst, weight, message):
    with pytest.raises(ValueError, match=message):
        PartitionGraph.from_coo(5 if message == "dst|src" else 3, np.array(src), np.array(dst), weight)


def test_from_coo_rejects_bad_vertex_weights_and_node_types():
    with pytest.raises(ValueError, match=r"vertex_weights must have shape \[3\]"):
        PartitionGraph.from_coo(3, np.array([0]), np.array([1]), vertex_weights=np.ones((2, 2)))
    with pytest.raises(ValueError, match=">= 0"):
        PartitionGraph.from_coo(3, np.array([0]), np.array([1]), vertex_weights=np.array([1.0, -1.0, 0.0]))
    with pytest.raises(ValueError, match="node_type must have shape"):
        PartitionGraph.from_coo(3, np.array([0]), np.array([1]), node_type=np.zeros(4, dtype=np.int8))


def test_normalized_vertex_weight_gives_each_constraint_equal_mass():
    weights = np.array([[1.0, 0.0, 0.0], [3.0, 10.0, 0.0]])
    combined = normalized_vertex_weight(weights)
    assert combined.tolist() == [0.25, 1.75]  # the all-zero column is dropped


# --------------------------------------------------------------------------- base class and book checks


@pytest.mark.parametrize("num_parts", [0, -3])
def test_partition_rejects_num_parts_below_one(num_parts):
    with pytest.raises(ValueError, match="num_parts must be >= 1"):
        MetisPartitioner().partition(two_cliques(), num_parts)


def test_partition_rejects_non_integer_num_parts():
    with pytest.raises(ValueError, match="num_parts must be an integer"):
        RandomPartitioner().partition(two_cliques(), 2.0)


def test_validate_partition_book_names_the_broken_rule():
    with pytest.raises(ValueError, match=r"shape \(3,\), expected \(4,\)"):
        validate_partition_book(np.array([0, 1, 0]), 4, 2)
    with pytest.raises(ValueError, match=r"part id 2 outside \[0, 2\)"):
        validate_partition_book(np.array([0, 1, 2, 0]), 4, 2)
    with pytest.raises(ValueError, match=r"part id -1 outside"):
        validate_partition_book(np.array([0, -1, 1, 0]), 4, 2)
    with pytest.raises(ValueError, match=r"parts \[1\] are empty"):
        validate_partition_book(np.array([0, 0, 2, 0]), 4, 3)
    book = validate_partition_book(np.array([1, 0, 1]), 3, 5)  # N < num_parts: empty parts allowed
    assert book.dtype == np.int32 and not book.flags.writeable


def test_base_class_checks_what_a_partitioner_returns():
    class OffByOne(Partitioner):
        algorithm = "broken"

        def _assign(self, graph, num_parts):
            return np.full(graph.num_nodes, num_parts), {}

    with pytest.raises(ValueError, match=r"part id 2 outside \[0, 2\)"):
        OffByOne().partition(two_cliques(), 2)


def test_fill_empty_parts_moves_one_node_per_empty_part():
    filled = fill_empty_parts(np.array([0, 0, 0, 0, 1]), 4)
    assert np.bincount(filled, minlength=4).tolist() == [2, 1, 1, 1]


def test_peak_rss_monitor_sees_memory_allocated_and_freed_inside_the_block():
    for probe in ("auto", "sampled"):
        with PeakRssMonitor(probe) as monitor:
            block = np.ones(96 * 2**20 // 8)  # 96 MiB, every page touched
            del block
        # "sampled" only catches it if the process-lifetime peak rose or a sample landed.
        if monitor.probe == "hwm_reset":
            assert monitor.peak_delta_bytes >= 90 * 2**20
    assert monitor.peak_rss_bytes >= monitor.start_rss_bytes > 0


def _small_block_peak(conn) -> None:
    with PeakRssMonitor() as monitor:
        small = np.ones(2**20 // 8)
        del small
    conn.send((monitor.probe, monitor.peak_delta_bytes))
    conn.close()


def test_peak_rss_of_a_spawned_process_is_its_own_not_its_parents():
    """getrusage's ru_maxrss of a fork+exec'd process keeps the parent's size at the fork
    (the pre-exec image), which clear_refs does not reset; VmHWM is the resettable peak."""
    import multiprocessing

    parent_block = np.ones(160 * 2**20 // 8)  # the parent is large when it spawns
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe(duplex=False)
    process = context.Process(target=_small_block_peak, args=(child_end,))
    process.start()
    child_end.close()
    probe, peak_delta = parent_end.recv()
    process.join()
    del parent_block
    if probe == "hwm_reset":
        assert peak_delta < 64 * 2**20, peak_delta


def test_nested_peak_rss_monitors_keep_the_outer_peak():
    """A partitioner's own monitor resets the kernel's high-water mark; the enclosing
    monitor (a benchmark around a whole job step) must still see the earlier peak."""
    with PeakRssMonitor() as outer:
        block = np.ones(96 * 2**20 // 8)
        del block
        with PeakRssMonitor() as inner:
            small = np.ones(2**20 // 8)
            del small
    if outer.probe == "hwm_reset":
        assert inner.peak_delta_bytes < 48 * 2**20
        assert outer.peak_delta_bytes >= 90 * 2**20


# --------------------------------------------------------------------------- METIS and random


def test_metis_cuts_the_single_bridge_between_two_cliques():
    graph = two_cliques()
    result = MetisPartitioner(seed=1).partition(graph, 2)
    book = result.assignment
    assert sorted(np.flatnonzero(book == book[0]).tolist()) in ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    assert book.shape == (10,) and np.bincount(book).tolist() == [5, 5]  # every node exactly once
    assert cut_weight(graph, book) == 1.0
    assert result.algorithm == "metis" and result.params["seed"] == 1
    assert result.wall_s > 0 and result.peak_rss_bytes > 0


def test_metis_is_deterministic_for_a_seed(planted):
    first = MetisPartitioner(seed=3).partition(planted.graph, 4).assignment
    second = MetisPartitioner(seed=3).partition(planted.graph, 4).assignment
    assert np.array_equal(first, second)


def test_metis_trivial_cases():
    graph = two_cliques()
    assert MetisPartitioner().partition(graph, 1).assignment.tolist() == [0] * 10
    many = MetisPartitioner().partition(graph, 10).assignment
    assert sorted(many.tolist()) == list(range(10))
    isolated = PartitionGraph.from_coo(6, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert np.bincount(MetisPartitioner().partition(isolated, 3).assignment).tolist() == [2, 2, 2]


def test_integer_weights_keep_integers_and_scale_floats():
    assert integer_edge_weights(np.array([1.0, 7.0, 3.0])).tolist() == [1, 7, 3]
    scaled = integer_edge_weights(np.array([0.001, 0.5, 1.0, 1e9]), resolution=1000)
    assert scaled.tolist() == [1, 667, 1333, 2**30]  # median 0.75 -> 1000, clipped both ends
    assert integer_vertex_weights(np.array([0.0, 0.25, 0.5, 1.0]), resolution=100).tolist() == [
        0,
        50,
        100,
        200,
    ]


def test_metis_balances_every_constraint_even_when_pymetis_takes_only_one():
    # 20 x 20 grid; constraint 1 lives only in the left quarter, where a single
    # vertical cut would put all of it in one part.
    side = 20
    node = np.arange(side * side).reshape(side, side)
    src = np.concatenate([node[:, :-1].ravel(), node[:-1, :].ravel()])
    dst = np.concatenate([node[:, 1:].ravel(), node[1:, :].ravel()])
    weights = np.ones((side * side, 2))
    weights[:, 1] = 0.0
    weights[node[:, : side // 4].ravel(), 1] = 1.0
    graph = PartitionGraph.from_coo(side * side, src, dst, vertex_weights=weights)
    result = MetisPartitioner(ufactor=50).partition(graph, 2)
    imbalance = max_imbalance(weights, result.assignment.astype(np.int64), 2)
    assert imbalance[0] <= 1.05 + 1e-9 and imbalance[1] <= 1.05 + 1e-9, (imbalance, result.info)


def test_random_partitioner_is_a_pure_hash_of_the_global_id():
    graph = two_cliques(50)
    first = RandomPartitioner(seed=5).partition(graph, 4).assignment
    assert np.array_equal(first, RandomPartitioner(seed=5).partition(graph, 4).assignment)
    assert np.array_equal(first, hash_part(np.arange(100), 4, seed=5))  # no repair needed at N=100
    assert np.array_equal(hash_part(np.array([17, 3]), 4, seed=5), first[[17, 3]])
    assert not np.array_equal(first, RandomPartitioner(seed=6).partition(graph, 4).assignment)
    sizes = np.bincount(hash_part(np.arange(40_000), 8), minlength=8)
    assert sizes.max() / sizes.mean() < 1.05


def test_metis_needs_at_most_half_the_remote_lookups_of_random(planted):
    graph, seeds = planted.graph, planted.events_per_node
    metis = MetisPartitioner().partition(graph, 4)
    random = RandomPartitioner().partition(graph, 4)
    metis_remote = remote_lookups(graph, metis.assignment, seeds, (10, 5), np.random.default_rng(0))
    random_remote = remote_lookups(graph, random.assignment, seeds, (10, 5), np.random.default_rng(0))
    assert metis_remote.remote_fraction[0] <= 0.5 * random_remote.remote_fraction[0]
    assert metis_remote.remote_fraction[1] <= 0.5 * random_remote.remote_fraction[1]
    assert 0.7 < random_remote.remote_fraction[0] < 0.8  # 1 - 1/4 for a hash


# --------------------------------------------------------------------------- coarsening


def test_coarsening_preserves_weights_and_respects_the_cluster_cap(planted):
    graph = planted.graph
    weight = normalized_vertex_weight(graph.vertex_weights)
    cap = max_cluster_weight_for(float(weight.sum()), 4, 32)
    coarsening = coarsen_graph(graph, edge_budget=10_000, max_cluster_weight=cap, coarsening_weight=weight)
    assert len(coarsening.levels) >= 2 and coarsening.reached_budget
    coarse = coarsening.levels[-1].graph
    assert coarse.num_edges <= 10_000 < coarsening.levels[-2].graph.num_edges
    mapping = coarsening.mapping(graph.num_nodes)
    assert mapping.shape == (graph.num_nodes,) and set(np.unique(mapping)) == set(range(coarse.num_nodes))
    src, dst, fine_weight = graph.edge_list()
    crossing = mapping[src] != mapping[dst]
    assert coarse.edge_list()[2].sum() == pytest.approx(fine_weight[crossing].sum())
    assert np.allclose(coarse.vertex_weights.sum(axis=0), graph.vertex_weights.sum(axis=0))
    cluster_weight = np.bincount(mapping, weights=weight)
    cluster_size = np.bincount(mapping)
    assert np.all(cluster_weight[cluster_size > 1] <= cap * (1 + 1e-9))
    keys = coarsening.cluster_key(graph.num_nodes)
    assert np.unique(keys).shape[0] == coarse.num_nodes  # one label per cluster
    assert np.array_equal(np.unique(mapping * graph.num_nodes + keys) % graph.num_nodes, np.unique(keys))


def test_coarsened_metis_is_close_to_direct_metis(planted):
    graph, seeds = planted.graph, planted.events_per_node
    direct = MetisPartitioner().partition(graph, 4)
    coarsened = CoarsenedMetisPartitioner(edge_budget=10_000).partition(graph, 4)
    assert len(coarsened.info["levels"]) >= 3 and coarsened.info["reached_budget"]
    assert coarsened.info["levels"][-1]["edges"] <= 10_000
    direct_cut = edge_cut_fraction(graph, direct.assignment)
    coarse_cut = edge_cut_fraction(graph, coarsened.assignment)
    assert coarse_cut <= 1.15 * direct_cut + 0.01, (coarse_cut, direct_cut)
    for imbalance in max_imbalance(graph.vertex_weights, coarsened.assignment.astype(np.int64), 4):
        assert imbalance <= 1.03 + 1e-9
    random = RandomPartitioner().partition(graph, 4)
    coarse_remote = remote_lookups(graph, coarsened.assignment, seeds, (10,), np.random.default_rng(1))
    random_remote = remote_lookups(graph, random.assignment, seeds, (10,), np.random.default_rng(1))
    assert coarse_remote.remote_fraction[0] <= 0.5 * random_remote.remote_fraction[0]


def test_coarsened_metis_within_budget_is_direct_metis(planted):
    direct = MetisPartitioner().partition(planted.graph, 4)
    within = CoarsenedMetisPartitioner(edge_budget=10**9).partition(planted.graph, 4)
    assert within.info["levels"] == [{"nodes": planted.graph.num_nodes, "edges": planted.graph.num_edges}]
    # Same METIS run; the collapsed-constraint rebalance is shared too.
    assert np.array_equal(direct.assignment, within.assignment)


# --------------------------------------------------------------------------- refinement


def test_refine_repairs_a_perturbed_book_within_the_caps(planted):
    graph = planted.graph
    metis = MetisPartitioner().partition(graph, 4).assignment.astype(np.int64)
    rng = np.random.default_rng(0)
    perturbed = metis.copy()
    perturbed[rng.choice(graph.num_nodes, 400, replace=False)] = rng.integers(0, 4, 400)
    assert cut_weight(graph, perturbed) > 2 * cut_weight(graph, metis)
    refined, info = refine(graph, perturbed, 4, imbalance=0.05)
    assert cut_weight(graph, refined) <= 1.05 * cut_weight(graph, metis)
    caps = balance_caps(graph.vertex_weights, 4, 0.05)
    assert np.all(part_loads(graph.vertex_weights, refined, 4) <= caps * (1 + 1e-9))
    assert info["refine_moves"] > 0 and info["cut_weight_after"] < info["cut_weight_before"]


def test_refine_from_a_hash_book_never_raises_the_cut(planted):
    graph = planted.graph
    start = hash_part(np.arange(graph.num_nodes), 4)
    refined, info = refine(graph, start, 4, imbalance=0.05, max_passes=20)
    assert cut_weight(graph, refined) < 0.3 * cut_weight(graph, start)
    assert info["refine_passes"] > 1


def test_rebalance_empties_an_overloaded_part():
    graph = two_cliques(20)
    start = np.zeros(graph.num_nodes, dtype=np.int64)
    start[-2:] = 1
    caps = balance_caps(graph.vertex_weights, 2, 0.0)
    balanced, info = rebalance(graph, start, 2, caps)
    assert info["rebalance_feasible"]
    assert np.bincount(balanced, minlength=2).tolist() == [20, 20]
    assert cut_weight(graph, balanced) == 1.0  # the cheapest nodes moved: one clique each


# --------------------------------------------------------------------------- quality metrics


def hand_graph() -> tuple[PartitionGraph, np.ndarray]:
    """Path 0 -1- 1 -3- 2 -1- 3, types [0, 0, 1, 1], parts [0, 0, 1, 1]."""
    graph = PartitionGraph.from_coo(
        4,
        np.array([0, 1, 2]),
        np.array([1, 2, 3]),
        np.array([1.0, 3.0, 1.0]),
        node_type=np.array([0, 0, 1, 1]),
    )
    return graph, np.array([0, 0, 1, 1])


def test_edge_cut_fraction_on_a_hand_computed_example():
    graph, book = hand_graph()
    assert edge_cut_fraction(graph, book) == pytest.approx(1 / 3)
    assert edge_cut_fraction(graph, book, weighted=True) == pytest.approx(3 / 5)
    assert edge_cut_fraction(graph, np.zeros(4, dtype=np.int64)) == 0.0


def test_remote_lookups_on_a_hand_computed_example():
    graph, book = hand_graph()
    # Fanouts above every degree take all neighbours: deterministic.
    events = np.array([0, 1, 0, 0])  # one training event, at node 1
    lookups = remote_lookups(graph, book, events, (10, 10), np.random.default_rng(0), num_seeds=None)
    # hop 1 from seed 1 (part 0): {0: local, 2: remote}
    # hop 2: from 0 -> {1: local}; from 2 -> {1: local, 3: remote}; remote w.r.t. the seed's part
    assert lookups.lookups == (2, 3)
    assert lookups.remote_fraction == pytest.approx((1 / 2, 1 / 3))


def test_balance_on_a_hand_computed_example():
    graph, book = hand_graph()
    events = np.array([0, 2, 1, 0])  # events at nodes 1, 1, 2
    result = balance(graph, book, 2, events_per_node=events, type_names=["user", "content"])
    assert result["nodes"] == 1.0
    assert result["nodes/user"] == 2.0 and result["nodes/content"] == 2.0
    assert result["edges"] == 1.0  # degree sums 1 + 2 and 2 + 1
    assert result["training_events"] == pytest.approx(2 / 1.5)


def test_sampling_without_replacement_is_uniform_over_neighbours():
    hub = 20
    graph = PartitionGraph.from_coo(hub + 1, np.zeros(hub, dtype=np.int64), np.arange(1, hub + 1))
    origin, neighbour = sample_neighbours(graph, np.zeros(4_000, dtype=np.int64), 5, np.random.default_rng(0))
    assert np.bincount(origin).tolist() == [5] * 4_000
    per_origin = np.sort(neighbour.reshape(4_000, 5), axis=1)
    assert np.all(np.diff(per_origin, axis=1) > 0)  # no neighbour twice for one origin
    frequency = np.bincount(neighbour, minlength=hub + 1)[1:] / 4_000
    assert np.allclose(frequency, 5 / hub, atol=0.03)
    leaf_origin, leaf_neighbour = sample_neighbours(graph, np.array([3, 7]), 5, np.random.default_rng(0))
    assert leaf_origin.tolist() == [0, 1] and leaf_neighbour.tolist() == [0, 0]


def test_quality_report_has_the_agreed_keys(planted):
    result = MetisPartitioner().partition(planted.graph, 4)
    report = quality_report(
        planted.graph, result, planted.events_per_node, np.random.default_rng(0), num_seeds=500
    )
    for key in ("edge_cut_fraction", "remote_fraction_1hop", "remote_fraction_2hop", "balance", "wall_s"):
        assert key in report
    assert report["peak_rss_bytes"] == result.peak_rss_bytes
    assert set(report["edge_cut_fraction"]) == {"unweighted", "weighted"}
    assert report["balance"]["training_events"] <= 1.1
    with pytest.raises(ValueError, match="events_per_node has shape"):
        quality_report(planted.graph, result, np.array([3]), np.random.default_rng(0))
    half = planted.events_per_node / 2.0
    with pytest.raises(ValueError, match="non-negative integer event counts"):
        quality_report(planted.graph, result, half, np.random.default_rng(0))


def test_seeds_drawn_from_event_counts_equal_draws_from_the_list_of_events():
    """The report's estimator is unchanged: drawing an event uniformly from the list of
    every event's node (8 B per event) is drawing a node in proportion to its events;
    with the list in ascending node order even the draws are identical."""
    events = np.array([0, 3, 0, 1, 5, 0, 2])
    per_event = np.repeat(np.arange(events.shape[0]), events)
    from_list = per_event[np.random.default_rng(4).integers(0, per_event.shape[0], size=1_000)]
    assert np.array_equal(draw_seeds(events, 1_000, np.random.default_rng(4)), from_list)
    frequency = np.bincount(draw_seeds(events, 200_000, np.random.default_rng(5)), minlength=7) / 200_000
    assert np.allclose(frequency, events / events.sum(), atol=0.005)
    assert np.array_equal(draw_seeds(events, None, np.random.default_rng(0)), per_event)
    with pytest.raises(ValueError, match="no training events"):
        draw_seeds(np.zeros(4), 10, np.random.default_rng(0))


def test_the_report_measures_every_book_on_the_same_sampled_trees(planted):
    graph, events = planted.graph, planted.events_per_node
    book = MetisPartitioner().partition(graph, 4)
    rng = np.random.default_rng(2)
    trees = sample_trees(graph, draw_seeds(events, 300, rng), (10, 5), rng)
    assert [len(n) for n in trees.neighbours] == [len(r) for r in trees.roots]
    # every lookup of hop 1 is a neighbour of its tree's seed
    src, dst, _ = graph.edge_list()
    pairs = set(zip(src.tolist(), dst.tolist(), strict=True))
    seeds = trees.seeds[trees.roots[0]]
    assert all((min(u, v), max(u, v)) in pairs for u, v in zip(seeds.tolist(), trees.neighbours[0].tolist(),
                                                                  strict=True))
    with_trees = quality_report(graph, book, events, None, trees=trees)
    fresh = quality_report(graph, book, events, np.random.default_rng(2), num_seeds=300)
    assert with_trees["remote_fraction_1hop"] == fresh["remote_fraction_1hop"]
    assert with_trees["remote_fraction_2hop"] == fresh["remote_fraction_2hop"]


# --------------------------------------------------------------------------- incremental placement


def test_placement_prefers_the_part_of_the_heaviest_neighbours():
    book = np.array([0, 0, 1, 1, 1, -1])
    placement = place_new_nodes(
        book,
        np.array([5]),
        (np.array([5, 5, 2, 0]), np.array([2, 3, 5, 5]), np.array([1.0, 1.0, 1.0, 2.0])),
        part_loads=np.array([2.0, 3.0]),
    )
    assert placement.assignment[5] == 1  # weight 3 to part 1 against 2 to part 0
    assert placement.assignment[:5].tolist() == [0, 0, 1, 1, 1]  # existing book untouched


def test_placement_keeps_balance_within_tolerance_when_every_neighbour_is_in_one_part():
    num_old, num_new = 100, 300
    book = np.concatenate([np.arange(num_old) % 4, np.full(num_new, -1)])
    new_ids = np.arange(num_old, num_old + num_new)
    hub = 0  # every new node links to a part-0 hub
    placement = place_new_nodes(
        book,
        new_ids,
        (new_ids, np.full(num_new, hub), None),
        np.bincount(book[:num_old], minlength=4),
        tolerance=0.1,
    )
    sizes = np.bincount(placement.assignment, minlength=4)
    assert sizes.sum() == num_old + num_new and np.all(placement.assignment >= 0)
    assert sizes.max() <= 1.1 * sizes.mean()
    assert sizes[0] == sizes.max()  # the neighbours' part is filled up to the cap first
    assert placement.num_over_cap == 0


@settings(max_examples=40, deadline=None)
@given(
    num_old=st.integers(1, 40),
    num_new=st.integers(1, 60),
    num_parts=st.integers(1, 5),
    batch_size=st.integers(1, 70),
    tolerance=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**32 - 1),
)
def test_placement_places_every_new_node_within_the_caps(
    num_old, num_new, num_parts, batch_size, tolerance, seed
):
    rng = np.random.default_rng(seed)
    book = np.concatenate([rng.integers(0, num_parts, num_old), np.full(num_new, -1)])
    new_ids = rng.permutation(np.arange(num_old, num_old + num_new))
    src = rng.choice(new_ids, 3 * num_new)
    dst = rng.integers(0, num_old + num_new, 3 * num_new)
    keep = src != dst
    weights = rng.integers(1, 4, num_new).astype(float)
    old_weights = np.ones(num_old)
    loads = np.bincount(book[:num_old], weights=old_weights, minlength=num_parts)
    placement = place_new_nodes(
        book,
        new_ids,
        (src[keep], dst[keep], rng.random(keep.sum()) + 0.1),
        loads,
        new_node_weights=weights,
        tolerance=tolerance,
        batch_size=batch_size,
    )
    assert np.array_equal(placement.assignment[:num_old], book[:num_old])
    assert np.all((placement.assignment >= 0) & (placement.assignment < num_parts))
    expected = loads + np.bincount(placement.assignment[new_ids], weights=weights, minlength=num_parts)
    assert np.allclose(placement.part_loads[:, 0], expected)
    # Parts that were over the cap before placement only ever receive nothing.
    new_load = expected - loads
    assert np.all((expected <= placement.caps[0] + 1e-9) | (new_load == 0))
    assert placement.num_over_cap == 0


def test_placement_ignores_caps_of_constraints_a_node_does_not_carry():
    # Part 0 is far over its training-event cap; an item (no events) still joins its neighbours there.
    book = np.array([0, 0, 1, -1])
    placement = place_new_nodes(
        book,
        np.array([3]),
        (np.array([3, 3]), np.array([0, 1]), None),
        part_loads=np.array([[2.0, 100.0], [1.0, 0.0]]),
        new_node_weights=np.array([[1.0, 0.0]]),
        tolerance=1.0,
    )
    assert placement.assignment[3] == 0


def test_placement_streams_new_nodes_whose_neighbours_are_new():
    # 4 -> existing node 2 (part 1); 5 links only to 4, 6 only to 5.
    book = np.array([0, 0, 1, 1, -1, -1, -1])
    edges = (np.array([4, 5, 6]), np.array([2, 4, 5]), None)
    loads = np.array([2.0, 2.0])
    streamed = place_new_nodes(book, np.array([4, 5, 6]), edges, loads, batch_size=1, tolerance=1.0)
    assert streamed.assignment[4:].tolist() == [1, 1, 1]
    # In one batch 5 and 6 cannot see 4: they fall back to the load penalty.
    batched = place_new_nodes(book, np.array([4, 5, 6]), edges, loads, batch_size=3, tolerance=1.0)
    assert batched.assignment[4] == 1 and batched.assignment[5] == 0


def test_placement_rejects_bad_input():
    book = np.array([0, 1, -1])
    no_edges = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), None)
    with pytest.raises(ValueError, match="new node 1 is already placed in part 1"):
        place_new_nodes(book, np.array([1]), no_edges, np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match=r"new_node_ids contains node id 3 outside \[0, 3\)"):
        place_new_nodes(book, np.array([3]), no_edges, np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="repeated"):
        place_new_nodes(book, np.array([2, 2]), no_edges, np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="edges dst contains node id 9"):
        place_new_nodes(book, np.array([2]), (np.array([2]), np.array([9]), None), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="assignment holds part 1 but part_loads has 1 parts"):
        place_new_nodes(book, np.array([2]), no_edges, np.array([1.0]))


def test_edge_cut_drift_against_the_last_full_run():
    graph, book = hand_graph()
    drift = edge_cut_drift(graph, book, baseline_cut_fraction=0.25)
    assert drift.current == pytest.approx(1 / 3)
    assert drift.relative == pytest.approx((1 / 3) / 0.25 - 1)
    assert drift.exceeds(0.2) and not drift.exceeds(0.5)


# --------------------------------------------------------------------------- Spark twin


def small_community_graph() -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    num_nodes = 60
    community = np.arange(num_nodes) % 3
    src = rng.integers(0, num_nodes, 300)
    same = rng.random(300) < 0.85
    dst = np.where(
        same, (src + 3 * rng.integers(1, num_nodes // 3, 300)) % num_nodes, rng.integers(0, num_nodes, 300)
    )
    keep = src != dst
    assert np.all((community[src] == community[dst])[same & keep])
    return num_nodes, src[keep], dst[keep], rng.integers(1, 4, keep.sum()).astype(float)


@pytest.mark.spark
def test_spark_coarsening_equals_the_numpy_reference(spark, tmp_path):
    from partitioning.spark_coarsen import coarse_vertex_weights_spark, coarsen_spark

    num_nodes, src, dst, weight = small_community_graph()
    graph = PartitionGraph.from_coo(num_nodes, src, dst, weight)
    unit = np.ones(num_nodes)
    reference = coarsen_graph(
        graph, edge_budget=150, max_cluster_weight=8.0, coarsening_weight=unit, iterations=1, max_rounds=3
    )
    # Two rounds, then the budget stops it: labels must carry across rounds.
    assert len(reference.levels) == 2 and reference.reached_budget

    edges_df = spark.createDataFrame(
        [(int(u), int(v), float(w)) for u, v, w in zip(src, dst, weight, strict=True)],
        "src long, dst long, weight double",
    )
    vweights_df = spark.createDataFrame(
        [(node, 1.0) for node in range(num_nodes)], "node long, weight double"
    )
    coarse_edges_df, mapping_df = coarsen_spark(
        edges_df,
        vweights_df,
        max_cluster_weight=8.0,
        edge_budget=150,
        iterations=1,
        max_rounds=3,
        checkpoint_dir=str(tmp_path / "checkpoints"),
    )
    mapping = {row.node: row.cluster for row in mapping_df.collect()}
    assert sorted(mapping) == list(range(num_nodes))  # every node mapped exactly once
    spark_key = np.array([mapping[node] for node in range(num_nodes)])
    assert np.array_equal(spark_key, reference.cluster_key(num_nodes))

    coarsest = reference.levels[-1]
    ref_src, ref_dst, ref_weight = coarsest.graph.edge_list()
    expected = sorted(
        zip(
            coarsest.node_key[ref_src].tolist(),
            coarsest.node_key[ref_dst].tolist(),
            ref_weight.tolist(),
            strict=True,
        )
    )
    spark_edges = sorted((row.src, row.dst, row.weight) for row in coarse_edges_df.collect())
    assert spark_edges == expected
    crossing = spark_key[src] != spark_key[dst]
    assert sum(w for _, _, w in spark_edges) == pytest.approx(weight[crossing].sum())

    sizes = {
        row.cluster: row.weight for row in coarse_vertex_weights_spark(vweights_df, mapping_df).collect()
    }
    assert sizes == {int(k): float(c) for k, c in zip(*np.unique(spark_key, return_counts=True), strict=True)}


@pytest.mark.spark
def test_spark_graph_view_equals_the_in_memory_view(spark):
    """Every per-edge step of refinement, placement and the quality report gives, from
    Spark, what the in-memory CSR gives (integer weights: no rounding differences)."""
    import pandas as pd

    from partitioning.refine import CsrGraphView
    from partitioning.spark_graph import SparkGraphView

    num_nodes, src, dst, weight = small_community_graph()
    rng = np.random.default_rng(8)
    events = rng.integers(0, 4, num_nodes)
    degree = np.bincount(src, minlength=num_nodes) + np.bincount(dst, minlength=num_nodes)
    graph = PartitionGraph.from_coo(
        num_nodes, src, dst, weight, vertex_weights=np.stack([events, degree], axis=1).astype(float)
    )
    lo, hi, pair_weight = graph.edge_list()
    pairs = spark.createDataFrame(pd.DataFrame({"src": lo, "dst": hi, "weight": pair_weight})).cache()
    memory, remote = CsrGraphView(graph), SparkGraphView(pairs, graph.vertex_weights)
    book = hash_part(np.arange(num_nodes), 3)
    try:
        assert np.array_equal(remote.degrees(), memory.degrees())
        assert remote.edge_cut(book) == memory.edge_cut(book)

        nodes = np.array([5, 0, 17, 5, 59])
        positions = np.array([0, 1, 2, 0, 0]) % memory.degrees()[nodes]
        assert np.array_equal(remote.neighbours_at(nodes, positions), memory.neighbours_at(nodes, positions))

        asked = np.array([31, 2, 40, 7])
        expected_weights = memory.neighbour_part_weights(book, asked, 3)
        got_weights = remote.neighbour_part_weights(book, asked, 3)
        for got, expected in zip(got_weights, expected_weights, strict=True):
            assert np.array_equal(got, expected)

        moves = memory.boundary_moves(book, 3)
        assert moves[0].size > 0
        for got, expected in zip(remote.boundary_moves(book, 3), moves, strict=True):
            assert np.array_equal(got, expected)
        nodes, dest, gain = moves
        assert np.array_equal(
            remote.still_profitable(book, nodes, dest, gain), memory.still_profitable(book, nodes, dest, gain)
        )

        ranges = [(10, 15), (50, 52)]
        got = sorted(zip(*(a.tolist() for a in remote.pairs_touching(ranges)), strict=True))
        assert got == sorted(zip(*(a.tolist() for a in memory.pairs_touching(ranges)), strict=True))

        seeds = draw_seeds(events, 50, np.random.default_rng(1))
        remote_trees = sample_trees(remote, seeds, (4, 3), np.random.default_rng(2))
        memory_trees = sample_trees(memory, seeds, (4, 3), np.random.default_rng(2))
        for got, expected in zip(remote_trees.neighbours, memory_trees.neighbours, strict=True):
            assert np.array_equal(got, expected)

        skewed = book.copy()
        skewed[:20] = 0  # part 0 over its caps: rebalancing has work to do
        refined_remote, info_remote = refine(remote, skewed, 3, imbalance=0.2)
        refined_memory, info_memory = refine(graph, skewed, 3, imbalance=0.2)
        assert info_memory["rebalance_moves"] > 0 and info_memory["refine_moves"] > 0
        assert np.array_equal(refined_remote, refined_memory)
        assert info_remote == info_memory
    finally:
        remote.close()
        pairs.unpersist()
