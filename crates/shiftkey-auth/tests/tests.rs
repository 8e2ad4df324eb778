//! shiftkey-auth's integration tests: one binary, a module per area.

mod bearer;
mod manager;
mod timing_props;
