"""``python -m minicnn.programs`` is the ``minicnn`` command."""

from minicnn.programs.cli import main

raise SystemExit(main())
