"""medtune trainables: networks, the shared fit/evaluate loop, metrics and Tune trial functions."""
