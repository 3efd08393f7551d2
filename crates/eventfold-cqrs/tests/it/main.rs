//! eventfold-cqrs against real databases (SQLite files, PostgreSQL schemas) and a real
//! RabbitMQ (127.0.0.1:5672, guest/guest, or `EVENTFOLD_TEST_AMQP_URL`; a virtual host per
//! test, deleted when it ends). `django_interop` and `replication` run the real django-cqrs
//! 3.1.0 (the projects in `tests/django/`) from the venv `scripts/interop-venv.sh` makes
//! (or the Python in `EVENTFOLD_INTEROP_PYTHON`).

mod django;
mod django_interop;
mod items;
mod replication;
mod support;
mod table;
mod tooling;
