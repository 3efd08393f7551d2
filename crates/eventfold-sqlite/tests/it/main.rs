//! Integration tests of the SQLite store: the shared conformance suite (in memory and on a
//! file), then what only SQLite has (files, processes, schema versions, projections).

mod conformance;
mod sqlite;
mod transaction;
