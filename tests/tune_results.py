"""A Tune callback for tests: the driver-side view of every ``tune.report``."""
from ray import tune


class CollectResults(tune.Callback):
    def __init__(self):
        self.rows = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.rows.append(result)
