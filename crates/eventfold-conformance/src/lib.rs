//! eventfold-conformance (work in progress).
