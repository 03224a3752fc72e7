//! How one launch is supervised: restart policy, backoff, maximum lifetime; and how these
//! travel on a container's labels, so a restarted daemon resumes them.

use crate::config::Config;
use crate::sandbox::AppState;
use std::collections::HashMap;
use std::time::Duration;

/// Longest delay between restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run that lasted this long resets the restart count: the app is healthy again.
pub const RESTART_RESET: Duration = Duration::from_secs(60);

/// Label: `never` or `on-failure`.
pub const LABEL_RESTART: &str = "io.foldclient.restart";
/// Label: most restarts after failures.
pub const LABEL_MAX_RESTARTS: &str = "io.foldclient.max_restarts";
/// Label: restarts so far.
pub const LABEL_RESTARTS: &str = "io.foldclient.restarts";
/// Label: when the app must be gone (ms since the epoch).
pub const LABEL_DEADLINE: &str = "io.foldclient.deadline_ms";

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

/// How one launch is supervised (restarts reuse it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOptions {
    /// Run on the host, NOT sandboxed (dev mode).
    pub direct: bool,
    /// Arguments for the binary.
    pub args: Vec<String>,
    /// Image for this launch instead of the app's.
    pub image: Option<String>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Hard limit on the app's run time (killed, not restarted, when exceeded).
    pub max_lifetime: Option<Duration>,
}

impl LaunchOptions {
    /// The daemon's defaults for a launch.
    pub fn defaults(config: &Config, direct: bool, args: Vec<String>) -> LaunchOptions {
        LaunchOptions {
            direct,
            args,
            image: None,
            restart: config.restart,
            max_lifetime: config.max_lifetime,
        }
    }

    /// The labels recording these options, `restarts` so far and the deadline.
    pub fn labels(&self, restarts: u32, deadline_ms: Option<u64>) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (LABEL_RESTART.to_string(), self.restart.as_str().to_string()),
            (
                LABEL_MAX_RESTARTS.to_string(),
                self.restart.max_restarts().to_string(),
            ),
            (LABEL_RESTARTS.to_string(), restarts.to_string()),
        ]);
        if let Some(deadline) = deadline_ms {
            labels.insert(LABEL_DEADLINE.to_string(), deadline.to_string());
        }
        labels
    }

    /// Options (with restarts so far and deadline) read back from a container's labels;
    /// missing or unreadable labels fall back to `config`'s defaults.
    pub fn from_labels(
        labels: &HashMap<String, String>,
        config: &Config,
        args: Vec<String>,
        image: String,
    ) -> (LaunchOptions, u32, Option<u64>) {
        let number = |key: &str| labels.get(key).and_then(|v| v.parse::<u64>().ok());
        let max = number(LABEL_MAX_RESTARTS)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(config.restart.max_restarts());
        let restart = labels
            .get(LABEL_RESTART)
            .and_then(|r| RestartPolicy::parse(r, max).ok())
            .unwrap_or(config.restart);
        let restarts = number(LABEL_RESTARTS)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0);
        let options = LaunchOptions {
            direct: false,
            args,
            image: (!image.is_empty()).then_some(image),
            restart,
            max_lifetime: None,
        };
        (options, restarts, number(LABEL_DEADLINE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Overrides};

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

    #[test]
    fn options_round_trip_through_labels() {
        let file = FileConfig::parse("", std::path::Path::new("t.toml")).unwrap();
        let over = Overrides {
            state_dir: Some("/x".into()),
            ..Overrides::default()
        };
        let config = Config::build(file, over, 1000).unwrap();
        let options = LaunchOptions {
            direct: false,
            args: vec!["a".into()],
            image: Some("img:1".into()),
            restart: RestartPolicy::OnFailure { max_restarts: 7 },
            max_lifetime: Some(Duration::from_secs(9)),
        };
        let labels = options.labels(2, Some(1234));
        let (back, restarts, deadline) =
            LaunchOptions::from_labels(&labels, &config, vec!["a".into()], "img:1".into());
        assert_eq!(back.restart, options.restart);
        assert_eq!(back.args, options.args);
        assert_eq!(back.image, options.image);
        assert_eq!((restarts, deadline), (2, Some(1234)));
        let (fallback, restarts, deadline) =
            LaunchOptions::from_labels(&HashMap::new(), &config, vec![], String::new());
        assert_eq!(fallback.restart, config.restart);
        assert_eq!((restarts, deadline, fallback.image), (0, None, None));
    }
}
