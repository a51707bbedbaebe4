"""clickgraph: learn from a platform's whole interaction history as one temporal graph.

Stages: ``spark_jobs`` (logs -> graph store -> partition shards), ``partitioning``
(METIS and placement), ``trainer`` (temporal sampling, GNN, distributed training).
This package holds what they share: configuration, manifests, storage and the CLI.
"""

__version__ = "0.1.0"
