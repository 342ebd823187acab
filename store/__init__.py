"""Storage shared by the API and the worker: settings, tables, sessions and every query.

Nothing outside this package writes SQL. The API and the worker import the functions in
``store.jobs``, ``store.records`` and ``store.tokens``; the schema changes only through
Alembic revisions in ``migrations/``.
"""
