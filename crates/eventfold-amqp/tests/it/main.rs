//! Integration tests against a real RabbitMQ (127.0.0.1:5672, guest/guest, or
//! `EVENTFOLD_TEST_AMQP_URL`). Every test gets its own virtual host, deleted when it ends.
//! `nameko_interop` also runs the real nameko 2.14.1 from the venv `scripts/interop-venv.sh`
//! makes (or the Python in `EVENTFOLD_INTEROP_PYTHON`).

mod config;
mod consumer;
mod nameko;
mod nameko_interop;
mod publisher;
mod support;
