//! eventfold-postgres (work in progress).
