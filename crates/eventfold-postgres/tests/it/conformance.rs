//! The shared conformance suite, each check on a fresh schema.

use crate::support::GuardedStore;

async fn make_store() -> GuardedStore {
    GuardedStore::fresh("conf").await
}

eventfold_conformance::conformance_tests!(make_store);
