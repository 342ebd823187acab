"""Storage shared by the API and the worker: settings, tables, sessions and every query.

Nothing outside this package writes SQL. The API and the worker import the functions in
``store.jobs``, ``store.records``, ``store.tokens`` and ``store.datasets`` (and, for the files
of the data roots and uploads, ``store.data_roots``); the schema changes only through
Alembic revisions in ``migrations/``.
"""
