"""``python -m poolkit``: the ``poolkit`` command (see :mod:`poolkit._tools._cli`)."""

from ._tools._cli import main

raise SystemExit(main())
