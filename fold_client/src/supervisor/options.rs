//! How one launch is supervised: restart policy, backoff, maximum lifetime; and how these
//! travel on a container's labels, so a restarted daemon resumes them.

use crate::config::Config;
use crate::restart::RestartPolicy;
use std::collections::HashMap;
use std::time::Duration;

/// Label: `never` or `on-failure`.
pub const LABEL_RESTART: &str = "io.foldclient.restart";
/// Label: most restarts after failures.
pub const LABEL_MAX_RESTARTS: &str = "io.foldclient.max_restarts";
/// Label: restarts so far.
pub const LABEL_RESTARTS: &str = "io.foldclient.restarts";
/// Label: when the app must be gone (ms since the epoch).
pub const LABEL_DEADLINE: &str = "io.foldclient.deadline_ms";

/// How one launch is supervised (restarts reuse it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOptions {
    /// Run on the host, NOT sandboxed (dev mode).
    pub direct: bool,
    /// Arguments for the binary.
    pub args: Vec<String>,
    /// The program that runs the binary as its script (`LaunchSpec::interpreter`).
    pub interpreter: Option<String>,
    /// Image for this launch instead of the app's.
    pub image: Option<String>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Hard limit on the app's run time (killed, not restarted, when exceeded).
    pub max_lifetime: Option<Duration>,
    /// Where a job keeps its output (`app run`); `None` for a launch.
    pub capture: Option<crate::sandbox::capture::JobOutput>,
}

impl LaunchOptions {
    /// The daemon's defaults for a launch.
    pub fn defaults(config: &Config, direct: bool, args: Vec<String>) -> LaunchOptions {
        LaunchOptions {
            direct,
            args,
            interpreter: None,
            image: None,
            restart: config.restart,
            max_lifetime: config.max_lifetime,
            capture: None,
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
    /// missing or unreadable labels fall back to the `default` policy.
    pub fn from_labels(
        labels: &HashMap<String, String>,
        default: RestartPolicy,
        args: Vec<String>,
        image: String,
    ) -> (LaunchOptions, u32, Option<u64>) {
        let number = |key: &str| labels.get(key).and_then(|v| v.parse::<u64>().ok());
        let max = number(LABEL_MAX_RESTARTS)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(default.max_restarts());
        let restart = labels
            .get(LABEL_RESTART)
            .and_then(|r| RestartPolicy::parse(r, max).ok())
            .unwrap_or(default);
        let restarts = number(LABEL_RESTARTS)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0);
        let options = LaunchOptions {
            direct: false,
            args,
            interpreter: None,
            image: (!image.is_empty()).then_some(image),
            restart,
            max_lifetime: None,
            capture: None,
        };
        (options, restarts, number(LABEL_DEADLINE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Overrides};

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
            interpreter: None,
            image: Some("img:1".into()),
            restart: RestartPolicy::OnFailure { max_restarts: 7 },
            max_lifetime: Some(Duration::from_secs(9)),
            capture: None,
        };
        let labels = options.labels(2, Some(1234));
        let (back, restarts, deadline) =
            LaunchOptions::from_labels(&labels, config.restart, vec!["a".into()], "img:1".into());
        assert_eq!(back.restart, options.restart);
        assert_eq!(back.args, options.args);
        assert_eq!(back.image, options.image);
        assert_eq!((restarts, deadline), (2, Some(1234)));
        let (fallback, restarts, deadline) =
            LaunchOptions::from_labels(&HashMap::new(), config.restart, vec![], String::new());
        assert_eq!(fallback.restart, config.restart);
        assert_eq!((restarts, deadline, fallback.image), (0, None, None));
    }
}
