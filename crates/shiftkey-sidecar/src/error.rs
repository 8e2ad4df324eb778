//! What setting up a listener or a proxy can fail with.

use std::path::PathBuf;

/// An error of this crate: each names what was wrong and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// A path is unusable (a link, another user's, too open, not a socket).
    #[error("{}: {problem}", path.display())]
    Path {
        /// The path.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        problem: String,
    },
    /// An operating-system call failed: the text says what was being done, the system's own
    /// words are its [`source`](std::error::Error::source).
    #[error("{what}")]
    Io {
        /// What was being done, naming the path or address.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A setting is invalid; the message names it.
    #[error("{0}")]
    Config(String),
}

impl SidecarError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn path(path: &std::path::Path, problem: impl Into<String>) -> Self {
        Self::Path {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }
}
