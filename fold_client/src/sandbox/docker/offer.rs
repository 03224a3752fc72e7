//! What an engine offers: which engine it is (Docker or Podman, through the same API) and
//! which isolation tiers it can run, read from its `version` and `info` answers. Pure, so
//! every case is unit-tested without an engine.

use crate::sandbox::{Isolation, IsolationRequest, SandboxError};
use bollard::models::{SystemInfo, SystemVersion};

/// The engine behind the Docker API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Docker (moby).
    Docker,
    /// Podman's Docker-compatible service (`podman system service`).
    Podman,
}

impl Flavor {
    /// `docker` or `podman`.
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Docker => "docker",
            Flavor::Podman => "podman",
        }
    }

    /// Tells Podman from Docker: Podman names a `Podman Engine` component.
    pub fn of(version: &SystemVersion) -> Flavor {
        let podman = version
            .components
            .iter()
            .flatten()
            .any(|c| c.name.to_ascii_lowercase().contains("podman"));
        if podman {
            Flavor::Podman
        } else {
            Flavor::Docker
        }
    }
}

/// Arguments the gVisor runtime must be registered with: `--host-uds=open` lets the app
/// connect to its bind-mounted socket; `--network=none` lets a container without network
/// start at all (runsc otherwise refuses: "cannot run with network enabled in root network
/// namespace").
pub const GVISOR_ARGS: [&str; 2] = ["--host-uds=open", "--network=none"];

/// What the engine offers, as read once per connection (and again when a launch asks for
/// a tier that was missing, since a runtime can be registered while the engine runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Which engine.
    pub flavor: Flavor,
    /// The gVisor runtime's name when it is registered as it must be; else why not, with
    /// the fix.
    pub gvisor: Result<String, String>,
}

impl Offer {
    /// Reads the offer from the engine's answers; `runtime` is the name the gVisor runtime
    /// is expected under (`gvisor_runtime` in the config).
    pub fn read(version: &SystemVersion, info: &SystemInfo, runtime: &str) -> Offer {
        let flavor = Flavor::of(version);
        Offer {
            flavor,
            gvisor: gvisor(info, runtime, flavor),
        }
    }

    /// The tiers offered, weakest first.
    pub fn tiers(&self) -> Vec<Isolation> {
        let mut tiers = vec![Isolation::Container];
        if self.gvisor.is_ok() {
            tiers.push(Isolation::Gvisor);
        }
        tiers
    }

    /// The tier `request` runs under here and the OCI runtime to ask for (`None`: the
    /// engine's default).
    ///
    /// # Errors
    ///
    /// [`SandboxError::TierUnavailable`], naming how to provide the tier.
    pub fn resolve(
        &self,
        app: &str,
        request: IsolationRequest,
    ) -> Result<(Isolation, Option<String>), SandboxError> {
        match request.resolve(&self.tiers()) {
            Some(Isolation::Gvisor) => Ok((Isolation::Gvisor, self.gvisor.clone().ok())),
            Some(Isolation::Container) => Ok((Isolation::Container, None)),
            None => Err(SandboxError::TierUnavailable {
                app: app.to_string(),
                asked: request,
                fix: self.gvisor.clone().err().unwrap_or_default(),
            }),
        }
    }
}

fn gvisor(info: &SystemInfo, runtime: &str, flavor: Flavor) -> Result<String, String> {
    if flavor == Flavor::Podman {
        // Podman's `info` lists the runtimes its own CLI knows, but its Docker-compatible
        // API ignores `HostConfig.Runtime`: a container asked to run under runsc would run
        // under crun or runc. Never offer a tier the engine would silently weaken.
        return Err(format!(
            "Podman's Docker-compatible API ignores the container's OCI runtime, so it cannot \
             run {runtime:?}: FoldClient runs gVisor apps on Docker only (see \
             docs/operations.md); use the Docker engine, or install the app with --isolation \
             container"
        ));
    }
    let registered = info.runtimes.as_ref().and_then(|r| r.get(runtime));
    let Some(registered) = registered else {
        return Err(format!(
            "the engine has no OCI runtime named {runtime:?}. Install gVisor \
             (`apt-get install runsc`), register it in /etc/docker/daemon.json as \
             {{\"runtimes\": {{\"{runtime}\": {{\"path\": \"/usr/bin/runsc\", \"runtimeArgs\": \
             [\"{}\", \"{}\"]}}}}}} and reload the engine (`kill -HUP $(pidof dockerd)`), \
             or install the app with --isolation container",
            GVISOR_ARGS[0], GVISOR_ARGS[1]
        ));
    };
    let args = registered.runtime_args.clone().unwrap_or_default();
    let missing: Vec<&str> = GVISOR_ARGS
        .into_iter()
        .filter(|want| !args.iter().any(|a| a == want))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the runtime {runtime:?} is registered without {}: add them to its \"runtimeArgs\" \
             in /etc/docker/daemon.json and reload the engine (`kill -HUP $(pidof dockerd)`) \
             ({} lets the app reach its socket; {} lets a container without network start)",
            missing.join(" and "),
            GVISOR_ARGS[0],
            GVISOR_ARGS[1]
        ));
    }
    Ok(runtime.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{Runtime, SystemVersionComponents};
    use std::collections::HashMap;

    fn info(runtimes: &[(&str, &[&str])]) -> SystemInfo {
        SystemInfo {
            runtimes: Some(
                runtimes
                    .iter()
                    .map(|(name, args)| {
                        let runtime = Runtime {
                            path: Some("/usr/bin/runsc".into()),
                            runtime_args: Some(args.iter().map(|a| a.to_string()).collect()),
                            status: None,
                        };
                        (name.to_string(), runtime)
                    })
                    .collect::<HashMap<_, _>>(),
            ),
            ..SystemInfo::default()
        }
    }

    fn podman() -> SystemVersion {
        SystemVersion {
            components: Some(vec![SystemVersionComponents {
                name: "Podman Engine".into(),
                version: "4.3.1".into(),
                details: None,
            }]),
            ..SystemVersion::default()
        }
    }

    #[test]
    fn gvisor_is_offered_only_when_registered_with_its_arguments() {
        let docker = SystemVersion::default();
        let good = Offer::read(&docker, &info(&[("runsc", &GVISOR_ARGS)]), "runsc");
        assert_eq!(good.flavor, Flavor::Docker);
        assert_eq!(good.tiers(), [Isolation::Container, Isolation::Gvisor]);
        assert_eq!(
            good.resolve("a", IsolationRequest::Auto).unwrap(),
            (Isolation::Gvisor, Some("runsc".into()))
        );
        assert_eq!(
            good.resolve("a", IsolationRequest::Exactly(Isolation::Container))
                .unwrap(),
            (Isolation::Container, None)
        );

        let absent = Offer::read(&docker, &info(&[("runc", &[])]), "runsc");
        assert_eq!(absent.tiers(), [Isolation::Container]);
        assert_eq!(
            absent.resolve("a", IsolationRequest::Auto).unwrap().0,
            Isolation::Container
        );
        let err = absent
            .resolve("demo", IsolationRequest::Exactly(Isolation::Gvisor))
            .unwrap_err()
            .to_string();
        assert!(err.contains("demo") && err.contains("daemon.json"), "{err}");
        assert!(
            err.contains("--host-uds=open") && err.contains("kill -HUP"),
            "{err}"
        );

        let no_network_arg =
            Offer::read(&docker, &info(&[("runsc", &["--host-uds=open"])]), "runsc");
        let err = no_network_arg.gvisor.unwrap_err();
        assert!(err.contains("without --network=none"), "{err}");
    }

    #[test]
    fn podman_is_told_from_docker_by_its_component_and_never_offers_gvisor() {
        // Podman's `info` lists runsc, but its Docker API would run the container without it.
        let offer = Offer::read(&podman(), &info(&[("runsc", &GVISOR_ARGS)]), "runsc");
        assert_eq!(offer.flavor, Flavor::Podman);
        assert!(offer.gvisor.unwrap_err().contains("Docker only"));
    }
}
