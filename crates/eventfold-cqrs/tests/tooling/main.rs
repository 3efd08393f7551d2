//! Plain tables and the tooling against real databases (SQLite files, PostgreSQL
//! schemas) and a real broker (a vhost per test).

mod support;
mod table;
mod tooling;
