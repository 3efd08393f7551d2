//! Interop with the real django-cqrs 3.1.0 (the projects of `eventfold_testkit::django`,
//! run from the venv `scripts/interop-venv.sh` makes, or the Python in
//! `EVENTFOLD_INTEROP_PYTHON`), against a real RabbitMQ (127.0.0.1:5672, guest/guest, or
//! `EVENTFOLD_TEST_AMQP_URL`; a virtual host per test, deleted when it ends).
//!
//! - `django_interop`: the wire format (bodies eventfold writes into a `cqrs_consume`
//!   replica; a django-cqrs master's bodies read and written back byte for byte);
//! - `replication`: eventfold's master, relay and replica consumer against django-cqrs's,
//!   both ways, and `cqrs_dead_letters` over eventfold's dead letters.

mod django;
mod django_interop;
mod items;
mod replication;
