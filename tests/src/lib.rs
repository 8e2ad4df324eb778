//! Support for shiftkey's cross-crate integration tests: real servers started on loopback.
//!
//! Each server is a child process owned by a guard that kills it on drop, so a failing test
//! leaves nothing running. A missing binary or package fails with the command that installs it.

#![forbid(unsafe_code)]

pub mod mqtt;
pub mod oidc;
pub mod postgres;
