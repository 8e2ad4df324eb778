//! shiftkey-store's tests: the file format, every corruption case, keys, and a no-panic property
//! over arbitrary bytes (the fuzz target in miniature; `cargo xtask proptest` runs it long).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
#![allow(
    clippy::disallowed_methods,
    reason = "tests stamp tokens with the wall clock"
)]

mod file;
mod fuzz;
