"""The Celery side: ``app`` (configuration and publishing), ``tasks`` (thin task adapters),
``runner`` (load a job, call cssl_core, record what it returns) and ``sweeper`` (re-publish
jobs whose message or worker was lost)."""
