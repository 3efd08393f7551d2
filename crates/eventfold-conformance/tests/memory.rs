//! The in-memory store passes the conformance suite.

async fn fresh_store() -> eventfold_core::InMemoryStore {
    eventfold_core::InMemoryStore::new()
}

eventfold_conformance::conformance_tests!(fresh_store);
