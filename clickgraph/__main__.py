"""``python -m clickgraph`` is the ``clickgraph`` command."""

from clickgraph.cli import main

raise SystemExit(main())
