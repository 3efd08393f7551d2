//! Benchmarks of eventfold's stores: what is not library code, kept out of the library
//! crates (a user of `eventfold-postgres` does not compile a benchmark harness).
//!
//! * the `postgres` module (feature `postgres`): the building blocks `eventfold bench pg-writers`
//!   and `eventfold bench worlds --backend postgres` call: the bare single-row commit rate
//!   of the server, and 1/4/16 concurrent writers with either ordering.
//! * the `changes` module (feature `changes`): `eventfold bench changes`, the peers'
//!   django-events-sourcing workload on change records, the relay and a consumer, with the
//!   broker's own confirmed-publish rate.
//! * the `replication` module (feature `replication`): `eventfold bench replication`, the
//!   peers' django-cqrs workload on a master, the relay and a replica consumer, with the
//!   broker's own consume-and-ack rate.
//! * the `inspect` module (feature `inspect`): `eventfold bench inspect`, the inspector's
//!   pages timed on a 1M-event stream inside a 10M-record log.
//! * `examples/bench_writers.rs` prints the whole writer matrix;
//!   `examples/anatomy.rs` times the pieces of a command on PostgreSQL;
//!   `examples/store_loop.rs` times the SQLite store alone in the shape of the Worlds
//!   command loop:
//!
//! ```sh
//! cargo run --release -p eventfold-bench --example bench_writers -- [seconds per run]
//! cargo run --release -p eventfold-bench --example anatomy -- [rounds]
//! cargo run --release -p eventfold-bench --example store_loop -- [streams] [rounds] [off|normal|full]
//! ```
//!
//! Not published; the figures they measured are in the store crates' docs and
//! BENCHMARKS.md.

#[cfg(feature = "postgres")]
pub mod postgres;

#[cfg(feature = "changes")]
pub mod changes;

#[cfg(feature = "replication")]
pub mod replication;

#[cfg(feature = "inspect")]
pub mod inspect;
