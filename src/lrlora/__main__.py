"""``python -m lrlora``: the ``lrlora`` command."""

from lrlora.cli import main

raise SystemExit(main())
