"""Programs built on the library, kept apart from its core: the ``minicnn`` command (``cli``), ``minicnn demo``
(``demo``) and the small-data comparison of the four recipes (``experiment``)."""
