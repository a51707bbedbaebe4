"""The phases of the graph build, one module each; :mod:`spark_jobs.build_graph` runs them.

* :mod:`.inputs`: find the event source and the entity tables, read them;
* :mod:`.state`: what the existing store holds (id maps, node counts, nodes), its
  ``store_hash``, and removal of run folders its manifest does not name;
* :mod:`.entities`: parse and check the entity tables into rows with quarantine
  reasons, duplicates marked; the entities known to the build;
* :mod:`.parse`: parse and check the events the same way (duplicates, unknown
  entities), staged once, counted per day; the column conversions both use;
* :mod:`.ids`: first days, id assignment, the node tables and id maps;
* :mod:`.edges`: event edges and link edges with their weights;
* :mod:`.quarantine`: the quarantined event and entity rows written;
* :mod:`.manifest`: the manifest, built from one :class:`~.manifest.BuildStats`;
* :mod:`.common`: constants, :class:`~.common.GraphBuildError` and helpers they share.
"""
