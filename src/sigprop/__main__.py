"""``python -m sigprop`` is the ``sigprop`` command."""

from sigprop.cli import main

raise SystemExit(main())
