"""The bottom layer: every contract the stages share, defined once.

Imports no stage (``spark_jobs``, ``partitioning``, ``trainer``) and no app code, and
never pyspark: Spark-specific schemas are built in ``spark_jobs`` from the names here.
"""
