"""One module per search, each a :class:`orchestrator.search.Search` registered in :mod:`orchestrator.registry`."""
