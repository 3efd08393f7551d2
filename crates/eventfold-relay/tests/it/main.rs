//! Integration tests against a real RabbitMQ (127.0.0.1:5672, guest/guest). Every test has
//! its own virtual host, deleted when it ends.

mod inbox;
mod relay;
mod support;
