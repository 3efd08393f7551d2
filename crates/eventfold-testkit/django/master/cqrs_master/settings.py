"""django-cqrs MASTER: owns `master_item` and publishes every save and delete (exchange
`cqrs`). Database and broker from the environment (interop_settings)."""
from interop_settings import *  # noqa: F403 (what both projects share)

SECRET_KEY = "eventfold-interop-master-not-secret"
INSTALLED_APPS = ["dj_cqrs", "cqrs_master"]
CQRS = {
    **cqrs_transport(),  # noqa: F405
    "master": {
        "CQRS_AUTO_UPDATE_FIELDS": False,
        "CQRS_MESSAGE_TTL": 86400,
        "meta_function": "cqrs_master.models.cqrs_meta",
    },
}
