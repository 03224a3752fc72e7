//! Isolation tiers: how strong a wall stands between a container app and the host.
//!
//! - `container`: the hardened container under the engine's default OCI runtime (runc):
//!   namespaces, cgroups, no capabilities, seccomp, on the host's kernel.
//! - `gvisor`: the same hardened container under gVisor (`runsc`), whose user-space kernel
//!   answers the app's system calls, so a kernel bug reachable from the app is a bug in
//!   gVisor rather than in the host's kernel.
//!
//! An app asks for a tier or for `auto` (the strongest the engine offers); the backend
//! resolves the request at each launch and never runs an app weaker than it asked.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The tier a container runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Isolation {
    /// The engine's default runtime (runc) on the host kernel.
    Container,
    /// gVisor: a user-space kernel between the app and the host's.
    Gvisor,
}

impl Isolation {
    /// Every tier, weakest first.
    pub const ALL: [Isolation; 2] = [Isolation::Container, Isolation::Gvisor];

    /// `container` or `gvisor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Container => "container",
            Isolation::Gvisor => "gvisor",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an app asks for: one tier exactly, or the strongest the engine offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum IsolationRequest {
    /// This tier or no launch at all.
    Exactly(Isolation),
    /// The strongest tier the engine offers at launch time.
    Auto,
}

impl IsolationRequest {
    /// `container`, `gvisor` or `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            IsolationRequest::Exactly(tier) => tier.as_str(),
            IsolationRequest::Auto => "auto",
        }
    }

    /// The tier to run under when the engine offers `offered` (weakest first), or `None`
    /// when the request cannot be met: never a weaker tier than asked.
    pub fn resolve(self, offered: &[Isolation]) -> Option<Isolation> {
        match self {
            IsolationRequest::Exactly(tier) => offered.contains(&tier).then_some(tier),
            IsolationRequest::Auto => offered.iter().max().copied(),
        }
    }
}

impl fmt::Display for IsolationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IsolationRequest {
    type Err = String;

    fn from_str(text: &str) -> Result<IsolationRequest, String> {
        match text {
            "auto" => Ok(IsolationRequest::Auto),
            other => Isolation::ALL
                .into_iter()
                .find(|tier| tier.as_str() == other)
                .map(IsolationRequest::Exactly)
                .ok_or_else(|| format!("{text:?}: expected container, gvisor or auto")),
        }
    }
}

impl FromStr for Isolation {
    type Err = String;

    fn from_str(text: &str) -> Result<Isolation, String> {
        match text.parse()? {
            IsolationRequest::Exactly(tier) => Ok(tier),
            IsolationRequest::Auto => Err("\"auto\" is a request, not a tier".into()),
        }
    }
}

// Serde goes through the names above (`FromStr` and `as_str`): one parser for the
// config file, the CLI, the registry and the admin socket.
impl TryFrom<String> for IsolationRequest {
    type Error = String;

    fn try_from(text: String) -> Result<IsolationRequest, String> {
        text.parse()
    }
}

impl From<IsolationRequest> for String {
    fn from(request: IsolationRequest) -> String {
        request.as_str().to_string()
    }
}

impl TryFrom<String> for Isolation {
    type Error = String;

    fn try_from(text: String) -> Result<Isolation, String> {
        text.parse()
    }
}

impl From<Isolation> for String {
    fn from(tier: Isolation) -> String {
        tier.as_str().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Isolation::{Container, Gvisor};

    #[test]
    fn a_request_is_met_exactly_or_not_at_all() {
        let both = [Container, Gvisor];
        let runc_only = [Container];
        let gvisor = IsolationRequest::Exactly(Gvisor);
        assert_eq!(gvisor.resolve(&both), Some(Gvisor));
        assert_eq!(gvisor.resolve(&runc_only), None, "never silently weaker");
        assert_eq!(IsolationRequest::Auto.resolve(&both), Some(Gvisor));
        assert_eq!(IsolationRequest::Auto.resolve(&runc_only), Some(Container));
        assert_eq!(IsolationRequest::Auto.resolve(&[]), None);
        assert_eq!(
            IsolationRequest::Exactly(Container).resolve(&both),
            Some(Container)
        );
    }

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for text in ["container", "gvisor", "auto"] {
            let request: IsolationRequest = text.parse().unwrap();
            assert_eq!(request.to_string(), text);
            let json = serde_json::to_string(&request).unwrap();
            assert_eq!(
                serde_json::from_str::<IsolationRequest>(&json).unwrap(),
                request
            );
        }
        assert!("kvm"
            .parse::<IsolationRequest>()
            .unwrap_err()
            .contains("expected"));
        assert!("auto".parse::<Isolation>().is_err());
        assert_eq!("gvisor".parse::<Isolation>(), Ok(Gvisor));
    }
}
