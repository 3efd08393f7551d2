//! Integration tests of the core, on the in-memory store.

mod application;
mod codec;
mod follower;
mod support;
