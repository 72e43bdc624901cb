"""medtune orchestrator: typed configs, data, storage, drivers, reports and the CLI."""
