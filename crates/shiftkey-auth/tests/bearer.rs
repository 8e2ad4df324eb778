//! The bearer login strategy against a small login endpoint on loopback.
