//! Integration tests against a real RabbitMQ (127.0.0.1:5672, guest/guest). Every test has
//! its own virtual host, deleted when it ends. `nameko_interop` also runs the real nameko
//! 2.14.1 from the venv `scripts/interop-venv.sh` makes (or `EVENTFOLD_INTEROP_PYTHON`).

mod inbox;
mod nameko_interop;
mod relay;
mod support;
