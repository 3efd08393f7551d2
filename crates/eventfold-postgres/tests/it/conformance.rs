//! The shared conformance suite, each check on a fresh schema.

use crate::support::{guarded, GuardedStore};

async fn make_store() -> GuardedStore {
    guarded("conf").await
}

eventfold_conformance::conformance_tests!(make_store);
