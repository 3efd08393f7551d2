//! The eventfold command line.
fn main() {}
