//! Restart policy: plain data that the configuration (defaults) and the supervisor (its
//! decisions) share, so that neither imports the other.

use crate::sandbox::AppState;
use std::time::Duration;

/// Longest delay between restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run that lasted this long resets the restart count: the app is healthy again.
pub const RESTART_RESET: Duration = Duration::from_secs(60);

/// What happens when an app exits on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never restarted.
    Never,
    /// Restarted after a non-zero exit or an OOM kill, at most `max_restarts` times in a
    /// row, with doubling backoff. A clean exit (0) or a stop is final.
    OnFailure {
        /// Most restarts in a row (a run of [`RESTART_RESET`] or longer resets the count).
        max_restarts: u32,
    },
}

impl RestartPolicy {
    /// Parses `never` or `on-failure` (`on_failure` too).
    ///
    /// # Errors
    ///
    /// A message naming the accepted values.
    pub fn parse(text: &str, max_restarts: u32) -> Result<RestartPolicy, String> {
        match text {
            "never" | "no" => Ok(RestartPolicy::Never),
            "on-failure" | "on_failure" => Ok(RestartPolicy::OnFailure { max_restarts }),
            other => Err(format!("{other:?}: expected never or on-failure")),
        }
    }

    /// `never` or `on-failure`.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure { .. } => "on-failure",
        }
    }

    /// Most restarts in a row (0 for `never`).
    pub fn max_restarts(self) -> u32 {
        match self {
            RestartPolicy::Never => 0,
            RestartPolicy::OnFailure { max_restarts } => max_restarts,
        }
    }

    /// Whether a run that ended in `state`, after `restarts` restarts in a row, is restarted.
    pub fn should_restart(self, state: &AppState, restarts: u32) -> bool {
        let failed = match state {
            AppState::Exited { code } => *code != 0,
            AppState::OomKilled => true,
            _ => false,
        };
        failed && restarts < self.max_restarts()
    }
}

/// Delay before restart number `restarts + 1`: `base`, doubling, at most [`MAX_BACKOFF`].
pub fn backoff(base: Duration, restarts: u32) -> Duration {
    base.saturating_mul(1u32 << restarts.min(16))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_decisions() {
        let p = RestartPolicy::OnFailure { max_restarts: 2 };
        assert!(p.should_restart(&AppState::Exited { code: 3 }, 0));
        assert!(p.should_restart(&AppState::OomKilled, 1));
        assert!(
            !p.should_restart(&AppState::Exited { code: 3 }, 2),
            "bounded"
        );
        assert!(
            !p.should_restart(&AppState::Exited { code: 0 }, 0),
            "clean exit"
        );
        assert!(
            !p.should_restart(&AppState::Stopped, 0),
            "stopped on request"
        );
        assert!(!RestartPolicy::Never.should_restart(&AppState::Exited { code: 1 }, 0));
        assert!(RestartPolicy::parse("always", 1).is_err());
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_millis(500);
        assert_eq!(backoff(base, 0), base);
        assert_eq!(backoff(base, 1), Duration::from_secs(1));
        assert_eq!(backoff(base, 3), Duration::from_secs(4));
        assert_eq!(backoff(base, 40), MAX_BACKOFF);
    }
}
