//! The inspector against real stores (SQLite, PostgreSQL) and a real broker (RabbitMQ).

mod amqp;
mod browser;
mod pages;
mod support;
