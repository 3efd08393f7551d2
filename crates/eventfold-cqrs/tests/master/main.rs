//! The master side of eventfold-cqrs against real servers: SQLite, PostgreSQL (a schema per
//! test) and RabbitMQ (a vhost per test).

mod relay;
mod saves;
mod support;
