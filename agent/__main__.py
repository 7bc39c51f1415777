"""``python -m agent`` runs the ``flagpost-agent`` command line."""

from agent.cli import main

raise SystemExit(main())
