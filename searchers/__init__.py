"""medtune searchers: search algorithms as thin Ray Tune Searcher adapters over plain functions."""
