//! Cross-crate integration tests against real servers on loopback.

mod oauth;
