"""The HTTP front end: thin routes over typed dependencies (``api.deps``), request and
response shapes in ``api.schemas``, problem+json errors in ``api.problems``."""
