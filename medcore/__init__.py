"""Types every room shares (errors, dataset info, result records, statuses, genotypes).

Imports only the standard library, so ``searchers``, ``trainables`` and ``orchestrator``
can all depend on it without importing each other or anything heavy.
"""
