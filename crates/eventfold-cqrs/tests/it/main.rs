//! eventfold-cqrs against real databases (SQLite files, PostgreSQL schemas).

mod support;
mod table;
mod tooling;
