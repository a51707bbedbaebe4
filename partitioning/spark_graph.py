"""A partitioned graph whose edges stay in Spark: refinement and quality as DataFrame steps.

Past ``partition.edge_budget`` the job never collects the fine adjacency; the
book is refined, measured and extended through :class:`SparkGraphView`, the
Spark implementation of :class:`partitioning.graph.GraphView`. The loops of
:mod:`partitioning.refine`, :mod:`partitioning.quality` and
:func:`partitioning.placement.place_new_nodes` run unchanged on the driver;
only their per-edge steps run here.

What lives where:
    Driver: the per-node arrays (vertex weights ``[N, C]``, node types, the
    book as int32, degrees once they are asked for), the candidate moves of a
    refinement pass with their gains (O(boundary nodes)), the sampled
    lookups of the quality report (O(seeds x fanouts)) and the pairs of the
    nodes :meth:`SparkGraphView.pairs_touching` is asked for.
    Executors: the adjacency. The book reaches them as a broadcast int32
    array (4 B per node), looked up by ``mapInPandas`` tasks, so no step
    shuffles the book; only per-(node, part) sums and per-node results are
    shuffled and aggregated.

Input table ``pairs``: ``src`` long, ``dst`` long, ``weight`` double, each
undirected pair once with ``src < dst``, no self loops, weights summed (the
job's ``weighted_adjacency``). Keep it persisted while the view is used.

Results equal the in-memory :class:`partitioning.refine.CsrGraphView` on the
same pairs, up to the order of floating-point sums (a tie between two parts
whose weights differ in the last bit may then go the other way).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from partitioning.graph import EdgeCut, GraphView


def collect_frame(frame: DataFrame) -> pd.DataFrame:
    """A DataFrame's rows on the driver through Arrow (``toArrow``, Spark >= 4.0).

    ``toPandas`` without ``spark.sql.execution.arrow.pyspark.enabled`` builds a Python
    ``Row`` per row first, several times the memory of the columns.
    """
    if hasattr(frame, "toArrow"):
        return frame.toArrow().to_pandas()
    return frame.toPandas()


def _sorted_lookup(sorted_keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each value in ``sorted_keys``, -1 where absent."""
    if sorted_keys.shape[0] == 0:
        return np.full(values.shape[0], -1, dtype=np.int64)
    index = np.minimum(np.searchsorted(sorted_keys, values), sorted_keys.shape[0] - 1)
    return np.where(sorted_keys[index] == values, index, -1)


def _both_directions(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(node, neighbour, weight)``: every pair of a batch from both of its ends."""
    src = frame["src"].to_numpy(np.int64)
    dst = frame["dst"].to_numpy(np.int64)
    weight = frame["weight"].to_numpy(np.float64)
    return np.concatenate([src, dst]), np.concatenate([dst, src]), np.concatenate([weight, weight])


class SparkGraphView(GraphView):
    """:class:`partitioning.graph.GraphView` of an adjacency held in Spark (module docstring).

    Args:
        pairs: the adjacency DataFrame, each undirected pair once (``src < dst``).
        vertex_weights: float [N] or [N, C] balance constraints.
        node_type: int [N] node type per id, or None.
    """

    def __init__(
        self, pairs: DataFrame, vertex_weights: np.ndarray, node_type: np.ndarray | None = None
    ) -> None:
        weights = np.asarray(vertex_weights, dtype=np.float64)
        self._vertex_weights = weights[:, None] if weights.ndim == 1 else weights
        self._node_type = None if node_type is None else np.asarray(node_type, dtype=np.int16)
        self._pairs = pairs.select(
            F.col("src").cast("long"), F.col("dst").cast("long"), F.col("weight").cast("double")
        )
        self._spark = pairs.sparkSession
        self._degrees: np.ndarray | None = None
        self._book: tuple[np.ndarray, object] | None = None

    @property
    def num_nodes(self) -> int:
        return int(self._vertex_weights.shape[0])

    @property
    def vertex_weights(self) -> np.ndarray:
        return self._vertex_weights

    @property
    def node_type(self) -> np.ndarray | None:
        return self._node_type

    def close(self) -> None:
        """Releases the broadcast book (the pairs DataFrame is the caller's)."""
        if self._book is not None:
            self._book[1].destroy()
            self._book = None

    def _broadcast_book(self, assignment: np.ndarray):
        """The book as a broadcast int32 array, reused while it does not change."""
        book = np.ascontiguousarray(assignment, dtype=np.int32)
        if book.shape != (self.num_nodes,):
            raise ValueError(f"assignment has shape {book.shape}, expected ({self.num_nodes},)")
        if self._book is not None and np.array_equal(self._book[0], book):
            return self._book[1]
        self.close()
        self._book = (book, self._spark.sparkContext.broadcast(book))
        return self._book[1]

    def _directed(self) -> DataFrame:
        """``node, neighbour, weight``: every pair from both of its ends."""
        reverse = self._pairs.select(F.col("dst").alias("node"), F.col("src").alias("neighbour"), "weight")
        return self._pairs.select(
            F.col("src").alias("node"), F.col("dst").alias("neighbour"), "weight"
        ).unionByName(reverse)

    def degrees(self) -> np.ndarray:
        if self._degrees is None:
            counts = collect_frame(self._directed().groupBy("node").count())
            degrees = np.zeros(self.num_nodes, dtype=np.int64)
            degrees[counts["node"].to_numpy(np.int64)] = counts["count"].to_numpy(np.int64)
            self._degrees = degrees
        return self._degrees

    def edge_cut(self, assignment: np.ndarray) -> EdgeCut:
        book = self._broadcast_book(assignment)

        def cut_of(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            part = book.value
            for frame in batches:
                src, dst = frame["src"].to_numpy(np.int64), frame["dst"].to_numpy(np.int64)
                weight = frame["weight"].to_numpy(np.float64)
                crossing = part[src] != part[dst]
                yield pd.DataFrame(
                    {
                        "cut_edges": [int(np.count_nonzero(crossing))],
                        "num_edges": [len(frame)],
                        "cut_weight": [float(weight[crossing].sum())],
                        "total_weight": [float(weight.sum())],
                    }
                )

        schema = "cut_edges long, num_edges long, cut_weight double, total_weight double"
        row = (
            self._pairs.mapInPandas(cut_of, schema)
            .agg(
                *[
                    F.sum(name).alias(name)
                    for name in ("cut_edges", "num_edges", "cut_weight", "total_weight")
                ]
            )
            .collect()[0]
        )
        return EdgeCut(
            cut_edges=int(row["cut_edges"] or 0),
            num_edges=int(row["num_edges"] or 0),
            cut_weight=float(row["cut_weight"] or 0.0),
            total_weight=float(row["total_weight"] or 0.0),
        )

    def neighbours_at(self, nodes: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The requested neighbours, ranked per node in Spark; only those are collected.

        The rows of the requested nodes are filtered out of the adjacency,
        numbered per node by ascending neighbour id and filtered again to the
        requested ``(node, position)`` keys: the driver receives one row per
        distinct request.
        """
        nodes = np.asarray(nodes, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.int64)
        if nodes.size == 0:
            return np.zeros(0, dtype=np.int64)
        stride = int(self.degrees().max()) + 1
        keys = nodes * stride + positions
        wanted_mask = np.zeros(self.num_nodes, dtype=bool)
        wanted_mask[nodes] = True
        wanted = self._spark.sparkContext.broadcast(wanted_mask)
        requested = self._spark.sparkContext.broadcast(np.unique(keys))

        def rows(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            keep_node = wanted.value
            for frame in batches:
                node, neighbour, _ = _both_directions(frame)
                keep = keep_node[node]
                yield pd.DataFrame({"node": node[keep], "neighbour": neighbour[keep]})

        def picks(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            wanted_keys = requested.value
            for frame in batches:
                key = frame["node"].to_numpy(np.int64) * stride + frame["position"].to_numpy(np.int64)
                yield pd.DataFrame({"key": key, "neighbour": frame["neighbour"].to_numpy(np.int64)})[
                    _sorted_lookup(wanted_keys, key) >= 0
                ]

        by_neighbour = Window.partitionBy("node").orderBy("neighbour")
        try:
            found = collect_frame(
                self._pairs.mapInPandas(rows, "node long, neighbour long")
                .withColumn("position", F.row_number().over(by_neighbour) - 1)
                .mapInPandas(picks, "key long, neighbour long")
            )
        finally:
            wanted.destroy()
            requested.destroy()
        found_keys = found["key"].to_numpy(np.int64)
        order = np.argsort(found_keys)
        index = _sorted_lookup(found_keys[order], keys)
        if (index < 0).any():
            missing = int(np.flatnonzero(index < 0)[0])
            raise ValueError(
                f"node {int(nodes[missing])} has no neighbour at position {int(positions[missing])}"
            )
        return found["neighbour"].to_numpy(np.int64)[order][index]

    def neighbour_part_weights(
        self, assignment: np.ndarray, nodes: np.ndarray, num_parts: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        book = self._broadcast_book(assignment)
        nodes = np.asarray(nodes, dtype=np.int64)
        wanted_mask = np.zeros(self.num_nodes, dtype=bool)
        wanted_mask[nodes] = True
        wanted = self._spark.sparkContext.broadcast(wanted_mask)

        def rows(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            part, keep_node = book.value, wanted.value
            for frame in batches:
                node, neighbour, weight = _both_directions(frame)
                keep = keep_node[node]
                yield pd.DataFrame(
                    {"node": node[keep], "part": part[neighbour[keep]], "weight": weight[keep]}
                )

        try:
            table = collect_frame(
                self._pairs.mapInPandas(rows, "node long, part int, weight double")
                .groupBy("node", "part")
                .agg(F.sum("weight").alias("weight"))
            )
        finally:
            wanted.destroy()
        order = np.argsort(nodes, kind="stable")
        local_row = order[np.searchsorted(nodes[order], table["node"].to_numpy(np.int64))]
        part = table["part"].to_numpy(np.int64)
        weight = table["weight"].to_numpy(np.float64)
        sort = np.lexsort((part, local_row))
        return local_row[sort], part[sort], weight[sort]

    def boundary_moves(
        self, assignment: np.ndarray, num_parts: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per node, the weight to each part, summed in Spark; only positive-gain moves come back."""
        book = self._broadcast_book(assignment)

        def rows(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            part = book.value
            for frame in batches:
                node, neighbour, weight = _both_directions(frame)
                yield pd.DataFrame(
                    {"node": node, "own": part[node], "part": part[neighbour], "weight": weight}
                )

        per_part = (
            self._pairs.mapInPandas(rows, "node long, own int, part int, weight double")
            .groupBy("node", "own", "part")
            .agg(F.sum("weight").alias("weight"))
        )
        is_own = F.col("part") == F.col("own")
        # max of (weight, -part): the heaviest other part, ties to the lowest part id
        per_node = per_part.groupBy("node").agg(
            F.sum(F.when(is_own, F.col("weight")).otherwise(F.lit(0.0))).alias("internal"),
            F.max(F.when(~is_own, F.struct(F.col("weight"), (-F.col("part")).alias("neg_part")))).alias(
                "best"
            ),
        )
        moves = collect_frame(
            per_node.where(F.col("best").isNotNull())
            .select(
                "node",
                (-F.col("best.neg_part")).alias("dest"),
                (F.col("best.weight") - F.col("internal")).alias("gain"),
            )
            .where(F.col("gain") > 0)
        ).sort_values("node")
        return (
            moves["node"].to_numpy(np.int64),
            moves["dest"].to_numpy(np.int64),
            moves["gain"].to_numpy(np.float64),
        )

    def still_profitable(
        self, assignment: np.ndarray, nodes: np.ndarray, dest: np.ndarray, priority: np.ndarray
    ) -> np.ndarray:
        """The afterburner of :mod:`partitioning.refine`, over the moving nodes' pairs in Spark."""
        nodes = np.asarray(nodes, dtype=np.int64)
        if nodes.size == 0:
            return np.zeros(0, dtype=bool)
        book = self._broadcast_book(assignment)
        order = np.lexsort((nodes, -np.asarray(priority, dtype=np.float64)))
        rank = np.empty(nodes.shape[0], dtype=np.int64)
        rank[order] = np.arange(nodes.shape[0])
        by_id = np.argsort(nodes)
        moves = self._spark.sparkContext.broadcast(
            (nodes[by_id], rank[by_id], np.asarray(dest, dtype=np.int64)[by_id])
        )

        def rows(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            part = book.value
            moving, moving_rank, moving_dest = moves.value
            for frame in batches:
                node, neighbour, weight = _both_directions(frame)
                row = _sorted_lookup(moving, node)
                keep = row >= 0
                row, neighbour, weight, node = row[keep], neighbour[keep], weight[keep], node[keep]
                other = _sorted_lookup(moving, neighbour)
                moved_first = (other >= 0) & (moving_rank[np.maximum(other, 0)] < moving_rank[row])
                neighbour_part = np.where(moved_first, moving_dest[np.maximum(other, 0)], part[neighbour])
                delta = weight * (
                    (neighbour_part == moving_dest[row]).astype(np.float64)
                    - (neighbour_part == part[node]).astype(np.float64)
                )
                yield pd.DataFrame({"row": row, "delta": delta})

        try:
            table = collect_frame(
                self._pairs.mapInPandas(rows, "row long, delta double")
                .groupBy("row")
                .agg(F.sum("delta").alias("delta"))
            )
        finally:
            moves.destroy()
        keep = np.zeros(nodes.shape[0], dtype=bool)
        profitable = table["row"].to_numpy(np.int64)[table["delta"].to_numpy(np.float64) > 0]
        keep[by_id[profitable]] = True
        return keep

    def pairs_touching(self, ranges: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pairs of the nodes in ``ranges``, filtered in Spark; only those are collected."""
        inside = F.lit(False)
        for start, stop in ranges:
            if stop > start:
                inside = (
                    inside | F.col("src").between(start, stop - 1) | F.col("dst").between(start, stop - 1)
                )
        table = collect_frame(self._pairs.where(inside))
        return (
            table["src"].to_numpy(np.int64),
            table["dst"].to_numpy(np.int64),
            table["weight"].to_numpy(np.float64),
        )
