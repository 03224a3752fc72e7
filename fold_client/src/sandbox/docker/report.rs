//! What the engine can do: storage-limit support (detected once, never assumed), and the
//! engine half of `fold_client doctor`.

use super::engine::{self, call, call_ok, Engine};
use super::offer::{Flavor, Offer};
use super::spec::LABEL_APP_NAME;
use crate::sandbox::Isolation;
use bollard::models::{ContainerCreateBody, HostConfig, SystemInfo};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;

/// Whether the engine can limit a container's writable layer (`storage_opt size`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum StorageSupport {
    /// Plausible from the engine's storage driver; the first create that asks for it decides.
    Untested,
    /// The engine accepted a size limit.
    Supported,
    /// The engine cannot do it; the reason, as shown by `doctor` and at launch.
    Unsupported(String),
}

impl StorageSupport {
    /// What the engine's storage driver says. overlay2 limits size only over xfs mounted
    /// with `pquota` (measured: overlay2 on ext4 refuses every create that asks).
    pub fn from_info(info: &SystemInfo) -> StorageSupport {
        let driver = info.driver.clone().unwrap_or_default();
        let backing = info
            .driver_status
            .iter()
            .flatten()
            .find(|kv| kv.first().is_some_and(|k| k == "Backing Filesystem"))
            .and_then(|kv| kv.get(1).cloned())
            .unwrap_or_default();
        match driver.as_str() {
            "overlay2" if backing == "xfs" => StorageSupport::Untested,
            "overlay2" => StorageSupport::Unsupported(format!(
                "storage driver overlay2 on {}: the engine limits container storage only for overlay over xfs \
                 mounted with the pquota option",
                if backing.is_empty() { "an unknown filesystem" } else { &backing }
            )),
            "btrfs" | "zfs" | "devicemapper" | "windowsfilter" => StorageSupport::Untested,
            other => StorageSupport::Unsupported(format!(
                "storage driver {other:?} has no per-container size limit"
            )),
        }
    }

    /// The launch and doctor warning when storage is not limited, with the fix.
    pub fn warning(&self) -> Option<String> {
        match self {
            StorageSupport::Unsupported(reason) => Some(format!(
                "the storage limit is not enforced on this engine ({reason}); to enforce it, put the \
                 engine's data root on xfs mounted with pquota (overlay2), or use btrfs/zfs"
            )),
            _ => None,
        }
    }
}

/// The engine's answers for `fold_client doctor`.
#[derive(Debug, Clone, Serialize)]
pub struct EngineReport {
    /// The address asked.
    pub host: String,
    /// `None` when reachable; else why not, with the fix.
    pub unreachable: Option<String>,
    /// Engine version, e.g. `20.10.24`.
    pub version: Option<String>,
    /// API version negotiated.
    pub api_version: Option<String>,
    /// `1` or `2`.
    pub cgroup_version: Option<String>,
    /// `cgroupfs` or `systemd`.
    pub cgroup_driver: Option<String>,
    /// Storage driver, e.g. `overlay2`.
    pub storage_driver: Option<String>,
    /// Whether storage limits work (probed with a throwaway container when an image is
    /// present).
    pub storage: StorageSupport,
    /// `None` when `init: true` works (probed when an image is present); else why not.
    pub init_problem: Option<String>,
    /// Whether the init check was a real container start (true) or read from `docker info`.
    pub init_probed: bool,
    /// Which limits the engine says it enforces (memory, swap, pids, cpu quota).
    pub limits_missing: Vec<String>,
    /// Each image asked about and whether the engine has it.
    pub images: Vec<(String, bool)>,
    /// The engine's own warnings (`docker info`).
    pub engine_warnings: Vec<String>,
    /// `docker` or `podman`.
    pub flavor: Option<String>,
    /// The isolation tiers the engine offers, weakest first.
    pub tiers: Vec<Isolation>,
    /// Why gVisor is not offered, with the fix.
    pub gvisor_problem: Option<String>,
    /// Whether a gVisor container was started (with an image present): `None` when it
    /// started or was not tried, else why it failed.
    pub gvisor_probe: Option<String>,
}

/// Label on the doctor's throwaway probe containers (no daemon adopts them).
const PROBE_LABEL: &str = "io.foldclient.doctor";

/// Builds the report: version, cgroups, storage and init support, image presence, the
/// engine's flavor and tiers (`gvisor_runtime`: the name gVisor is expected under).
pub async fn engine_report(
    host: &str,
    timeout: Duration,
    images: &[String],
    gvisor_runtime: &str,
) -> EngineReport {
    let mut report = EngineReport {
        host: host.to_string(),
        unreachable: None,
        version: None,
        api_version: None,
        cgroup_version: None,
        cgroup_driver: None,
        storage_driver: None,
        storage: StorageSupport::Untested,
        init_problem: None,
        init_probed: false,
        limits_missing: Vec::new(),
        images: Vec::new(),
        engine_warnings: Vec::new(),
        flavor: None,
        tiers: Vec::new(),
        gvisor_problem: None,
        gvisor_probe: None,
    };
    let docker = match engine::connect(host, timeout).await {
        Ok(d) => d,
        Err(e) => {
            report.unreachable = Some(e.to_string());
            return report;
        }
    };
    report.api_version = Some(docker.client_version().to_string());
    let version = call_ok(
        &docker,
        timeout,
        "reading the engine version",
        docker.version(),
    )
    .await
    .ok();
    report.version = version.as_ref().and_then(|v| v.version.clone());
    let mut flavor = Flavor::Docker;
    match call_ok(&docker, timeout, "reading engine info", docker.info()).await {
        Ok(info) => {
            report.cgroup_version = info.cgroup_version.map(|v| v.to_string());
            report.cgroup_driver = info.cgroup_driver.map(|d| d.to_string());
            report.storage_driver = info.driver.clone();
            report.storage = StorageSupport::from_info(&info);
            for (name, on) in [
                ("memory", info.memory_limit),
                ("swap (memory = memory+swap)", info.swap_limit),
                ("pids", info.pids_limit),
                ("cpu quota", info.cpu_cfs_quota),
            ] {
                if on == Some(false) {
                    report.limits_missing.push(name.to_string());
                }
            }
            report.engine_warnings = info.warnings.clone().unwrap_or_default();
            if let Some(version) = &version {
                let offer = Offer::read(version, &info, gvisor_runtime);
                flavor = offer.flavor;
                report.flavor = Some(flavor.as_str().into());
                report.tiers = offer.tiers();
                report.gvisor_problem = offer.gvisor.err();
            }
            // Podman's `info` never names its init (catatonit): there only the probe
            // below tells whether `init: true` works.
            if flavor == Flavor::Docker && info.init_binary.as_deref().unwrap_or("").is_empty() {
                report.init_problem = Some("the engine reports no init binary".into());
            }
        }
        Err(e) => report.unreachable = Some(e.to_string()),
    }
    for image in images {
        let present = engine::image_present(&docker, timeout, image)
            .await
            .unwrap_or(false);
        report.images.push((image.clone(), present));
    }
    if let Some((image, _)) = report.images.iter().find(|(_, present)| *present).cloned() {
        if report.storage != StorageSupport::Supported {
            report.storage = probe_storage(&docker, timeout, (&image, flavor)).await;
        }
        report.init_problem = probe_init(&docker, timeout, (&image, flavor), None).await;
        report.init_probed = true;
        if report.tiers.contains(&Isolation::Gvisor) {
            report.gvisor_probe =
                probe_init(&docker, timeout, (&image, flavor), Some(gvisor_runtime)).await;
        }
    }
    report
}

/// A probe container: no network, the rlimits every container of the daemon gets (Podman
/// starts none without them), `host_config` for the rest.
fn probe_body(image: &str, flavor: Flavor, host_config: HostConfig) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(vec!["/fold_client_doctor_probe".into()]),
        labels: Some(HashMap::from([
            (PROBE_LABEL.to_string(), "1".to_string()),
            (LABEL_APP_NAME.to_string(), "doctor".to_string()),
        ])),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ulimits: Some(super::spec::rlimits(flavor, Isolation::Container, 1024, 32)),
            ..host_config
        }),
        ..Default::default()
    }
}

fn probe_name(what: &str) -> String {
    format!("fold_client_doctor_{what}_{}", std::process::id())
}

/// Creates (never starts) a container with a 1 GiB size limit; the engine refuses at create.
async fn probe_storage(
    docker: &Engine,
    timeout: Duration,
    (image, flavor): (&str, Flavor),
) -> StorageSupport {
    let name = probe_name("storage");
    let body = probe_body(
        image,
        flavor,
        HostConfig {
            storage_opt: Some(HashMap::from([("size".to_string(), "1G".to_string())])),
            ..Default::default()
        },
    );
    let result = match engine::create(docker, timeout, &name, body).await {
        Ok(Ok(_)) => StorageSupport::Supported,
        Ok(Err(e)) => StorageSupport::Unsupported(engine::message(&e)),
        Err(e) => StorageSupport::Unsupported(e.to_string()),
    };
    let _ = engine::remove(docker, timeout, &name).await;
    result
}

/// Starts a container with `init: true` whose command does not exist, under `runtime`
/// (the engine's default when `None`): with a working init and runtime the start succeeds
/// (init reports exit 127 inside); without one the start fails.
async fn probe_init(
    docker: &Engine,
    timeout: Duration,
    (image, flavor): (&str, Flavor),
    runtime: Option<&str>,
) -> Option<String> {
    let name = probe_name(if runtime.is_some() { "gvisor" } else { "init" });
    let body = probe_body(
        image,
        flavor,
        HostConfig {
            init: Some(true),
            runtime: runtime.map(str::to_string),
            ..Default::default()
        },
    );
    let problem = match engine::create(docker, timeout, &name, body).await {
        Ok(Ok(id)) => match call(
            docker,
            timeout,
            "starting the init probe",
            docker.start_container(&id, None),
        )
        .await
        {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!(
                "a container with init: true does not start: {}",
                engine::message(&e)
            )),
            Err(e) => Some(e.to_string()),
        },
        Ok(Err(e)) => Some(format!(
            "cannot create the init probe: {}",
            engine::message(&e)
        )),
        Err(e) => Some(e.to_string()),
    };
    let _ = super::reap::remove(docker, timeout, &name).await;
    problem
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(driver: &str, backing: &str) -> SystemInfo {
        SystemInfo {
            driver: Some(driver.into()),
            driver_status: Some(vec![vec!["Backing Filesystem".into(), backing.into()]]),
            ..Default::default()
        }
    }

    #[test]
    fn storage_support_from_driver() {
        let ext4 = StorageSupport::from_info(&info("overlay2", "extfs"));
        assert!(matches!(&ext4, StorageSupport::Unsupported(r) if r.contains("xfs")));
        assert!(ext4.warning().unwrap().contains("not enforced"));
        assert_eq!(
            StorageSupport::from_info(&info("overlay2", "xfs")),
            StorageSupport::Untested
        );
        assert_eq!(
            StorageSupport::from_info(&info("btrfs", "btrfs")),
            StorageSupport::Untested
        );
        assert!(matches!(
            StorageSupport::from_info(&info("vfs", "extfs")),
            StorageSupport::Unsupported(_)
        ));
        assert!(StorageSupport::Supported.warning().is_none());
    }
}
