"""``python -m clickgraph`` is the ``clickgraph`` command."""

from clickgraph.app.cli import main

raise SystemExit(main())
