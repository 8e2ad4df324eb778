//! Process hardening at start: no core dumps and no ptrace attach by this user's other
//! processes, so the tokens and keys in memory do not land on disk or in a debugger. The one
//! module that knows how (Linux: `prctl(PR_SET_DUMPABLE, 0)` and `RLIMIT_CORE` 0); elsewhere a
//! no-op, so a Windows port touches only this file.

/// Turns core dumps and ptrace attach off for this process; a failure is logged, never fatal
/// (the packaged unit sets `LimitCORE=0` as well).
pub(crate) fn no_dumps() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{
            DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit,
        };
        if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
            tracing::debug!(error = %e, "cannot turn off core dumps and ptrace attach");
        }
        let none = Rlimit {
            current: Some(0),
            maximum: Some(0),
        };
        if let Err(e) = setrlimit(Resource::Core, none) {
            tracing::debug!(error = %e, "cannot set the core file size limit to 0");
        }
    }
}
