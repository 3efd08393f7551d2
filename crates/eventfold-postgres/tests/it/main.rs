//! Integration tests against a real PostgreSQL (`EVENTFOLD_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Each test uses its own schema and
//! drops it at the end.

mod conformance;
mod faults;
mod follower_restart;
mod followers;
mod gap_safety;
mod host_tx;
mod support;
mod transactions;
