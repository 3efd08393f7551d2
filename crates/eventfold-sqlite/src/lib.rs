//! eventfold-sqlite (work in progress).
