//! The replica consumer against the real broker and the real databases: each test has its
//! own RabbitMQ vhost and its own SQLite file or PostgreSQL schema.

mod support;

mod batch;
mod burst;
mod failover;
mod failures;
mod revisions;
mod shutdown;
