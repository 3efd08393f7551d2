"""The Django settings the master and replica projects share (each settings module starts
with `from interop_settings import *`), and the environment they read.

Every test runs them against a database and a RabbitMQ virtual host of its own, given by
environment variables (the Rust tests set them):

- INTEROP_AMQP_URL: the broker, with the test's vhost (amqp://user:pass@host:port/vhost);
- INTEROP_DB: the SQLite file of the project's database;
- INTEROP_QUEUE: the replica's queue (replica only; default "replica");
- INTEROP_EXCHANGE: the exchange (default "cqrs", django-cqrs's default).

The transport is django-cqrs's own RabbitMQTransport, through interop_transport.py: it
connects to the URL's vhost, which django-cqrs 3.1.0 alone does not.
"""
import os


__all__ = [
    "DEBUG", "USE_TZ", "TIME_ZONE", "ROOT_URLCONF", "DEFAULT_AUTO_FIELD", "DATABASES", "LOGGING",
    "env", "cqrs_transport",
]


def env(name, default=None):
    value = os.environ.get(name, default)
    if value is None:
        raise RuntimeError("{0} is not set (the interop tests set it)".format(name))
    return value


def cqrs_transport():
    return {
        "transport": "interop_transport.RabbitMQTransport",
        "url": env("INTEROP_AMQP_URL"),
        "exchange": env("INTEROP_EXCHANGE", "cqrs"),
    }


DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = None
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": env("INTEROP_DB")}}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"f": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "f"}},
    "loggers": {"django-cqrs": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
