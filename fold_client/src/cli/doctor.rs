//! `fold_client doctor`: checks the host and the engine, and says how to fix each problem.

use super::{table, Context};
use anyhow::Result;
use fold_client::admin::protocol::{ListRequest, StatusRequest};
use fold_client::config::{Config, Overrides, UidMode};
use fold_client::sandbox::docker::{self, EngineReport, StorageSupport};
use fold_client::sandbox::IsolationRequest;
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Serialize)]
struct Check {
    check: &'static str,
    status: &'static str,
    detail: String,
    fix: Option<String>,
}

fn ok(check: &'static str, detail: impl Into<String>) -> Check {
    Check {
        check,
        status: "ok",
        detail: detail.into(),
        fix: None,
    }
}

fn problem(
    check: &'static str,
    status: &'static str,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Check {
    Check {
        check,
        status,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Runs every check; exit code 1 when any failed.
pub async fn doctor(ctx: &Context) -> Result<i32> {
    let config = ctx.config(Overrides::default())?;
    let mut checks = Vec::new();
    // The daemon, if running, knows the installed apps' images and which engine it uses.
    let apps = ctx.call(ListRequest {}, Duration::from_secs(5)).await.ok();
    let status = match apps {
        Some(_) => ctx
            .call(StatusRequest {}, Duration::from_secs(5))
            .await
            .ok(),
        None => None,
    };
    checks.push(match &apps {
        Some(_) => ok(
            "daemon",
            format!("answers on {}", config.admin_socket.display()),
        ),
        None => problem(
            "daemon",
            "warn",
            format!("not answering on {}", config.admin_socket.display()),
            format!(
                "start it: fold_client --state-dir {} serve",
                config.state_dir.display()
            ),
        ),
    });
    let mut images = vec![config.default_image.clone()];
    for app in apps.into_iter().flat_map(|list| list.apps) {
        if !images.contains(&app.image) {
            images.push(app.image);
        }
    }
    // The doctor asks the engine itself (read-only): it must work while the daemon is down,
    // and check what the daemon would use. A running daemon names its engine; else the
    // config says which one a daemon started now would use.
    let docker_host = status.map_or_else(|| config.docker_host.clone(), |s| s.docker_host);
    let report = docker::engine_report(
        &docker_host,
        config.engine_timeout,
        &images,
        &config.gvisor_runtime,
    )
    .await;
    engine_checks(&config, &report, &mut checks);
    host_checks(&config, &mut checks);
    checks.push(peer_pidfd_check());
    let failed = checks.iter().any(|c| c.status == "FAIL");
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        let rows: Vec<Vec<String>> = checks
            .iter()
            .map(|c| vec![c.status.to_string(), c.check.to_string(), c.detail.clone()])
            .collect();
        table(&["STATUS", "CHECK", "DETAIL"], &rows);
        for c in checks.iter().filter(|c| c.fix.is_some()) {
            println!("fix {}: {}", c.check, c.fix.as_deref().unwrap_or(""));
        }
    }
    Ok(i32::from(failed))
}

fn engine_checks(config: &Config, report: &EngineReport, checks: &mut Vec<Check>) {
    if let Some(why) = &report.unreachable {
        checks.push(problem(
            "engine",
            "FAIL",
            why.clone(),
            "start the engine (`systemctl start docker` or `dockerd`), or set DOCKER_HOST to a running one",
        ));
        return;
    }
    checks.push(ok(
        "engine",
        format!(
            "Docker {} (API {}) at {}",
            report.version.as_deref().unwrap_or("?"),
            report.api_version.as_deref().unwrap_or("?"),
            report.host
        ),
    ));
    let cgroup = format!(
        "cgroup v{} ({}), host {}",
        report.cgroup_version.as_deref().unwrap_or("?"),
        report.cgroup_driver.as_deref().unwrap_or("?"),
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            "v2"
        } else {
            "v1"
        }
    );
    checks.push(if report.limits_missing.is_empty() {
        ok("cgroups", format!("{cgroup}; memory, swap, pids and cpu limits enforced"))
    } else {
        problem(
            "cgroups",
            "FAIL",
            format!("{cgroup}; not enforced: {}", report.limits_missing.join(", ")),
            "enable the missing cgroup controllers (e.g. boot with cgroup_enable=memory swapaccount=1)",
        )
    });
    checks.push(match (&report.storage, config.storage_limit) {
        (_, None) => ok("storage-opt", "no storage limit configured (storage_limit_bytes = 0)"),
        (StorageSupport::Supported, _) => ok("storage-opt", "container storage limits enforced"),
        (StorageSupport::Untested, _) => problem(
            "storage-opt",
            "warn",
            format!("untested: no image present to probe with ({})", report.storage_driver.as_deref().unwrap_or("?")),
            "load an image (docker load) and run doctor again",
        ),
        (s @ StorageSupport::Unsupported(_), _) => problem(
            "storage-opt",
            "warn",
            s.warning().unwrap_or_default(),
            "launches still work, without a disk limit; for one, put the engine's data root on xfs with pquota",
        ),
    });
    checks.push(match &report.init_problem {
        None if report.init_probed => ok("init", "init: true works (probed with a container)"),
        None => ok("init", "the engine has an init binary (not probed: no image present)"),
        Some(why) => problem(
            "init",
            "FAIL",
            why.clone(),
            if report.flavor.as_deref() == Some("podman") {
                "install Podman's init (`apt-get install catatonit`); without it PID 1 ignores SIGTERM"
            } else {
                "install the engine's init (docker-init / tini, e.g. `apt-get install tini`); without it PID 1 ignores SIGTERM"
            },
        ),
    });
    checks.push(isolation_check(config, report));
    for (image, present) in &report.images {
        checks.push(if *present {
            ok("image", format!("{image} present"))
        } else {
            problem(
                "image",
                "warn",
                format!("{image} missing (a launch tries to pull it)"),
                format!("`docker pull {image}` where a registry is reachable, or `docker load -i FILE.tar`"),
            )
        });
    }
    for warning in &report.engine_warnings {
        checks.push(problem(
            "engine",
            "warn",
            warning.clone(),
            "see the engine's documentation",
        ));
    }
}

/// Which isolation tiers the engine offers, and whether the default one is among them.
fn isolation_check(config: &Config, report: &EngineReport) -> Check {
    let flavor = report.flavor.as_deref().unwrap_or("engine");
    let tiers: Vec<&str> = report.tiers.iter().map(|t| t.as_str()).collect();
    let default = config.default_isolation;
    let offered = format!(
        "{flavor} offers isolation {} (default for new apps: {default}{})",
        tiers.join(", "),
        default
            .resolve(&report.tiers)
            .filter(|_| default == IsolationRequest::Auto)
            .map(|t| format!(", which runs as {t}"))
            .unwrap_or_default()
    );
    match (&report.gvisor_problem, &report.gvisor_probe) {
        (None, None) => ok("isolation", offered),
        (None, Some(why)) => problem(
            "isolation",
            "FAIL",
            format!("{offered}, but a gVisor container does not start: {why}"),
            "check the runtime's registration and `runsc --version`; docs/operations.md, \"Isolation tiers\"",
        ),
        (Some(why), _) => problem(
            "isolation",
            if default.resolve(&report.tiers).is_some() { "warn" } else { "FAIL" },
            format!("{offered}; gvisor is not: {why}"),
            "docs/operations.md, \"Isolation tiers\"",
        ),
    }
}

/// Checks `path` itself (a symlink is reported, never followed): its mode must be one of
/// `modes`, and its owner `want_uid` when given.
fn mode_check(path: &Path, modes: &[u32], want_uid: Option<u32>) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.file_type().is_symlink() {
        return Err(format!("{} is a symlink", path.display()));
    }
    let mode = meta.mode() & 0o7777;
    if !modes.contains(&mode) {
        let want: Vec<_> = modes.iter().map(|m| format!("{m:o}")).collect();
        return Err(format!(
            "{} has mode {mode:o}, expected {}",
            path.display(),
            want.join(" or ")
        ));
    }
    if let Some(uid) = want_uid.filter(|u| meta.uid() != *u) {
        return Err(format!(
            "{} is owned by uid {}, expected {uid}",
            path.display(),
            meta.uid()
        ));
    }
    Ok(())
}

/// Whether the kernel pins socket peers with a pidfd (`SO_PEERPIDFD`, Linux 6.5+), which the
/// container peer check uses so a reused pid cannot pass.
fn peer_pidfd_check() -> Check {
    use nix::sys::socket::{getsockopt, sockopt::PeerPidfd};
    let pair = std::os::unix::net::UnixStream::pair();
    match pair.map(|(a, _b)| getsockopt(&a, PeerPidfd)) {
        Ok(Ok(_)) => ok("peer pidfd", "SO_PEERPIDFD: socket peers are pinned by a pidfd"),
        Ok(Err(e)) => problem(
            "peer pidfd",
            "WARN",
            format!("SO_PEERPIDFD unavailable ({e}): the container peer check trusts the peer's pid without a liveness proof"),
            "run a kernel of 6.5 or later",
        ),
        Err(e) => problem("peer pidfd", "WARN", format!("cannot make a socket pair: {e}"), "-"),
    }
}

fn host_checks(config: &Config, checks: &mut Vec<Check>) {
    let euid = nix::unistd::geteuid().as_raw();
    if euid == 0 && config.uid_mode == UidMode::Daemon {
        checks.push(problem(
            "uid_mode",
            "FAIL",
            "uid_mode = daemon as root: containers would run as root, so Docker launches are refused",
            "use uid_mode = \"per_app\" (the default for root)",
        ));
    } else {
        checks.push(ok(
            "uid_mode",
            match config.uid_mode {
                UidMode::PerApp { base } => {
                    format!("per_app: each app its own uid from {}", base + 1)
                }
                UidMode::Daemon => format!("daemon: apps run as uid {euid}"),
            },
        ));
    }
    uid_checks(config, checks);
    let root = &config.socket_root;
    if !root.exists() {
        checks.push(ok(
            "socket root",
            format!("{} not created yet (serve creates it)", root.display()),
        ));
        return;
    }
    let mut bad = Vec::new();
    if let Err(e) = mode_check(root, &[0o711], Some(euid)) {
        bad.push(e);
    }
    // Only the daemon may write an app's socket directory (the app's group may read).
    if let Ok(entries) = std::fs::read_dir(root) {
        for dir in entries.flatten().map(|e| e.path()) {
            if let Err(e) = mode_check(&dir, &[0o750, 0o700], Some(euid)) {
                bad.push(e);
                continue;
            }
            let creds = dir.join("credentials.json");
            if std::fs::symlink_metadata(&creds).is_ok() {
                if let Err(e) = mode_check(&creds, &[0o640, 0o600], Some(euid)) {
                    bad.push(e);
                }
            }
        }
    }
    checks.push(if bad.is_empty() {
        ok(
            "socket root",
            format!(
                "{}: 0711; app dirs and credentials the daemon's, read-only to their app",
                root.display()
            ),
        )
    } else {
        problem(
            "socket root",
            "FAIL",
            bad.join("; "),
            format!(
                "stop the daemon, remove what is not the daemon's under {}, and start it: it recreates each app's directory (`app rotate` reissues lost credentials)",
                root.display()
            ),
        )
    });
}

/// Per-app uids must belong to their app alone: the configured range against the host's
/// user databases (a warning: install skips what is taken), and every uid reserved on the
/// host (by any daemon) against them (a failure: that user could become the app).
fn uid_checks(config: &Config, checks: &mut Vec<Check>) {
    use fold_client::config::MAX_PER_APP_UIDS;
    use fold_client::uids::{HostIds, Reservations};
    let UidMode::PerApp { base } = config.uid_mode else {
        return;
    };
    let host = match HostIds::load(&config.id_files) {
        Ok(host) => host,
        Err(e) => {
            checks.push(problem(
                "uids",
                "FAIL",
                e.to_string(),
                "make the user databases readable (run doctor as root)",
            ));
            return;
        }
    };
    let (first, last) = (base + 1, base + MAX_PER_APP_UIDS - 1);
    let in_range: Vec<String> = host
        .overlapping(first, last)
        .iter()
        .map(ToString::to_string)
        .collect();
    checks.push(if in_range.is_empty() {
        ok(
            "uid range",
            format!("{first}-{last} overlaps no user, group or subordinate range"),
        )
    } else {
        problem(
            "uid range",
            "warn",
            format!(
                "{first}-{last} overlaps {}; install skips those uids",
                in_range.join("; ")
            ),
            format!(
                "set uid_base to a free range (the default {} is outside the usual ones)",
                fold_client::config::DEFAULT_UID_BASE
            ),
        )
    });
    let dir = &config.uid_reservation_dir;
    if std::fs::symlink_metadata(dir).is_err() {
        checks.push(ok(
            "uid reservations",
            format!("{} not created yet (serve creates it)", dir.display()),
        ));
        return;
    }
    let reservations = match Reservations::open(dir) {
        Ok(r) => r,
        Err(e) => {
            checks.push(problem(
                "uid reservations",
                "FAIL",
                e.to_string(),
                format!(
                    "{} must be root's, mode 700, under root-owned directories; run doctor as root",
                    dir.display()
                ),
            ));
            return;
        }
    };
    let listed = match reservations.list() {
        Ok(listed) => listed,
        Err(e) => {
            checks.push(problem(
                "uid reservations",
                "FAIL",
                format!("{}: {e}", dir.display()),
                "run doctor as root",
            ));
            return;
        }
    };
    let mut bad = Vec::new();
    for (id, holder) in &listed {
        let who = match holder {
            Ok(h) => h.to_string(),
            Err(e) => format!("an unknown holder ({e})"),
        };
        for entry in host.overlaps(*id) {
            bad.push(format!("uid {id} of {who} overlaps {entry}"));
        }
    }
    let ours = listed
        .iter()
        .filter(|(_, h)| h.as_ref().is_ok_and(|h| h.state_dir == config.state_dir))
        .count();
    checks.push(if bad.is_empty() {
        ok(
            "uid reservations",
            format!(
                "{}: {} uids reserved on this host ({ours} by this daemon), none overlaps a user, group or subordinate range",
                dir.display(),
                listed.len()
            ),
        )
    } else {
        problem(
            "uid reservations",
            "FAIL",
            bad.join("; "),
            "launches of those apps are refused: `fold_client app remove` each and install it again (it gets a free uid), or remove the overlapping range (edit /etc/subuid and /etc/subgid, e.g. `usermod --del-subuids FIRST-LAST USER`) or give that user or group another id",
        )
    });
}
