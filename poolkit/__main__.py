"""``python -m poolkit``: the ``poolkit`` command (see :mod:`poolkit._cli`)."""

from ._cli import main

raise SystemExit(main())
