"""Getting jobs to workers: the Celery app's configuration, publishing a job id, and the
sweeper that re-queues jobs of lost workers and re-publishes queued ones. The API publishes
and sweeps, the worker consumes; both import this package, the API nothing of ``worker``."""
