"""clickgraph: learn from a platform's whole interaction history as one temporal graph.

Layers, bottom to top (``tests/test_layers.py`` keeps them so):

* ``clickgraph.core``: every contract the stages share, imports no stage: configuration,
  storage URLs, manifests, errors, the graph-store format and reader, event-time windows,
  attribute vocabularies and the shard-set format.
* the stages, each importing ``clickgraph.core`` and never each other: ``spark_jobs``
  (logs -> graph store -> partition shards; the partition job may call
  ``partitioning``), ``partitioning`` (METIS and placement), ``trainer`` (temporal
  sampling, GNN, distributed training, evaluation, export; never imports pyspark).
* ``clickgraph.app``: the ``clickgraph`` command, the pipeline and its report; may import
  everything.
"""

__version__ = "0.1.0"
