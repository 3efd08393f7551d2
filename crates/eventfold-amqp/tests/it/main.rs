//! Integration tests against a real RabbitMQ (127.0.0.1:5672, guest/guest, or
//! `EVENTFOLD_TEST_AMQP_URL`). Every test gets its own virtual host, deleted when it ends.

mod config;
mod consumer;
mod nameko;
mod publisher;
mod support;
