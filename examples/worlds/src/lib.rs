//! Worlds example (work in progress).
