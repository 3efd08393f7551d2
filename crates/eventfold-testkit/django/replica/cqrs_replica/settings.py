"""django-cqrs REPLICA: consumes its queue (INTEROP_QUEUE, bound to exchange `cqrs`)
into `replica_item`. Database and broker from the environment (interop_settings)."""
from interop_settings import *  # noqa: F403 (what both projects share)

SECRET_KEY = "eventfold-interop-replica-not-secret"
INSTALLED_APPS = ["dj_cqrs", "cqrs_replica"]
CQRS = {
    **cqrs_transport(),  # noqa: F405
    "queue": env("INTEROP_QUEUE", "replica"),  # noqa: F405
    "replica": {
        "CQRS_MAX_RETRIES": 30,
        "CQRS_RETRY_DELAY": 2,
        "delay_queue_max_size": 1000,
    },
}
