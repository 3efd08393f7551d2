//! eventfold (work in progress).
