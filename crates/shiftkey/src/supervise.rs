//! The daemon's background tasks, watched: when one ends without being asked to (a panic
//! included) the daemon says which, `/readyz` names it, and the process exits non-zero so the
//! service manager restarts it — instead of living on with a part missing.

use std::future::Future;
use std::pin::Pin;

use shiftkey_auth::TokenManager;
use tokio::task::{AbortHandle, JoinHandle};

/// Environment variable naming one task to make panic shortly after it starts: the test hook
/// that proves every task's death is noticed. Never set it in production.
pub(crate) const PANIC_TASK_ENV: &str = "SHIFTKEY_TEST_PANIC_TASK";

/// Whether the test hook names `task` (only in a build with the feature `test-util`: a service
/// build ignores the variable).
#[cfg(feature = "test-util")]
pub(crate) fn hook_names(task: &str) -> bool {
    std::env::var(PANIC_TASK_ENV).is_ok_and(|v| v == task)
}

/// Whether the test hook names `task`: never, in a build without the feature `test-util`.
#[cfg(not(feature = "test-util"))]
pub(crate) fn hook_names(_task: &str) -> bool {
    false
}

/// A background task ended although nobody asked it to.
#[derive(Debug)]
pub(crate) struct TaskDied(pub(crate) String);

impl std::fmt::Display for TaskDied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the background task `{}` stopped unexpectedly (see the log); exiting so the service \
             manager restarts shiftkey",
            self.0
        )
    }
}

impl std::error::Error for TaskDied {}

type Watch = Pin<Box<dyn Future<Output = String> + Send>>;

/// The named long-lived tasks and token refreshers of one daemon.
#[derive(Default)]
pub(crate) struct Tasks {
    watches: Vec<Watch>,
    aborts: Vec<AbortHandle>,
}

impl Tasks {
    /// Spawns `work` as the long-lived task `name`.
    pub(crate) fn spawn(&mut self, name: &str, work: impl Future<Output = ()> + Send + 'static) {
        let hooked = hook_names(name);
        let handle = tokio::spawn(async move {
            if hooked {
                tokio::select! {
                    () = work => {}
                    () = tokio::time::sleep(std::time::Duration::from_millis(300)) => {
                        panic!("{PANIC_TASK_ENV}: this task was asked to die");
                    }
                }
            } else {
                work.await;
            }
        });
        self.watch(name, handle);
    }

    /// Watches an already spawned long-lived task.
    pub(crate) fn watch(&mut self, name: &str, handle: JoinHandle<()>) {
        self.aborts.push(handle.abort_handle());
        let name = name.to_owned();
        self.watches.push(Box::pin(async move {
            match handle.await {
                Ok(()) => tracing::error!(task = %name, "a background task ended"),
                Err(e) if e.is_panic() => {
                    tracing::error!(task = %name, "a background task panicked");
                }
                Err(_) => tracing::error!(task = %name, "a background task was cancelled"),
            }
            name
        }));
    }

    /// Watches the refresher of token `name`.
    pub(crate) fn watch_refresher(&mut self, name: &str, manager: &TokenManager) {
        let manager = manager.clone();
        let name = format!("refresher:{name}");
        self.watches.push(Box::pin(async move {
            manager.died().await;
            name
        }));
    }

    /// The name of the first task to die; never resolves while all live.
    pub(crate) async fn first_death(&mut self) -> String {
        if self.watches.is_empty() {
            return std::future::pending().await;
        }
        let watches = std::mem::take(&mut self.watches);
        let (name, _, rest) = futures_util::future::select_all(watches).await;
        self.watches = rest;
        name
    }

    /// Stops every task.
    pub(crate) fn abort_all(&self) {
        for a in &self.aborts {
            a.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_task_to_die_is_named_a_panic_included() {
        let mut tasks = Tasks::default();
        tasks.spawn("lives", std::future::pending());
        tasks.spawn("panics", async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            panic!("a bug");
        });
        assert_eq!(tasks.first_death().await, "panics");
        tasks.spawn("ends", async {});
        assert_eq!(tasks.first_death().await, "ends");
        tasks.abort_all();
        assert_eq!(
            tasks.first_death().await,
            "lives",
            "an aborted task ends too"
        );
    }
}
