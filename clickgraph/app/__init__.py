"""The top layer: the ``clickgraph`` command, the pipeline and its report.

May import every stage; nothing below imports it.
"""
