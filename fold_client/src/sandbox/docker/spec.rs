//! The container an app gets: every hardening setting in one pure function, so it can be
//! read in one place and unit-tested without an engine.

use super::super::holder::HOLDER_MOUNT;
use super::super::{Isolation, LaunchSpec, SandboxError};
use super::offer::Flavor;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, ResourcesUlimits,
    RestartPolicy, RestartPolicyNameEnum,
};
use std::collections::HashMap;
use std::path::{Component, Path};
use std::time::Duration;

/// Label naming the app a container runs.
pub const LABEL_APP: &str = "io.foldclient.app_id";
/// Label naming the daemon that owns a container (`Config::daemon_label`).
pub const LABEL_DAEMON: &str = "io.foldclient.daemon";
/// Label naming the isolation tier the container runs under (`container`, `gvisor`).
pub const LABEL_ISOLATION: &str = "io.foldclient.isolation";
/// Label with the app's human name (informational).
pub const LABEL_APP_NAME: &str = "io.foldclient.app_name";
/// Label marking a warm container: prepared with the holder in front of the app's binary
/// (`prepared`). It stays on the container after a launch has taken it.
pub const LABEL_WARM: &str = "io.foldclient.warm";
/// Where the app's socket directory is mounted (read-only) inside the container.
pub const SOCKET_MOUNT: &str = "/tmp/fold_client_sockets";
/// Where the app's directory (its binary) is mounted (read-only).
pub const APP_MOUNT: &str = "/app";

/// The container name of an app: `fold_client_<app_id>`.
pub fn container_name(app_id: &str) -> String {
    format!("fold_client_{app_id}")
}

/// Everything that decides the container besides the launch spec.
#[derive(Debug)]
pub struct Plan<'a> {
    /// The app and its limits.
    pub spec: &'a LaunchSpec,
    /// This daemon's label value.
    pub daemon_label: &'a str,
    /// More labels (the supervisor's launch options, so a restarted daemon can resume them).
    pub extra_labels: &'a HashMap<String, String>,
    /// Writable-layer limit, only when the engine supports it.
    pub storage: Option<u64>,
    /// Grace between SIGTERM and SIGKILL (also recorded as the container's stop timeout,
    /// for operators who run `docker stop`).
    pub grace: Duration,
    /// The tier the container runs under.
    pub isolation: Isolation,
    /// The OCI runtime to ask for (`None`: the engine's default, runc).
    pub runtime: Option<&'a str>,
    /// The engine that runs it (Docker or Podman differ in a few settings).
    pub flavor: Flavor,
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn refuse(message: String) -> SandboxError {
    SandboxError::Backend(message)
}

/// Checks what must never reach the engine: root, host networking, odd binary names.
fn check(spec: &LaunchSpec) -> Result<(), SandboxError> {
    if spec.uid == 0 || spec.gid == 0 {
        return Err(refuse(format!(
            "refusing to run app {} as root (uid {}, gid {}) in a container: run the daemon with \
             uid_mode = \"per_app\" (the default for root) so each app gets its own non-root uid",
            spec.app_name, spec.uid, spec.gid
        )));
    }
    if let Some(network) = &spec.network {
        if network == "host" || network.starts_with("container:") || network.is_empty() {
            return Err(refuse(format!(
                "app {} may not use network {network:?}: only a named network (or none) is allowed",
                spec.app_name
            )));
        }
    }
    let mut parts = Path::new(&spec.binary).components();
    if !matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(_)), None)
    ) {
        return Err(refuse(format!(
            "binary {:?} must be a plain file name inside the app directory",
            spec.binary
        )));
    }
    if let Some(interpreter) = &spec.interpreter {
        super::super::check_interpreter(interpreter).map_err(refuse)?;
    }
    Ok(())
}

fn bind(source: &Path, target: &str) -> Mount {
    Mount {
        target: Some(target.to_string()),
        source: Some(source.display().to_string()),
        typ: Some(MountType::BIND),
        read_only: Some(true),
        ..Default::default()
    }
}

/// The create request for the app's container.
///
/// # Errors
///
/// The spec asks for something a container must never have (root, host network).
pub fn create_body(plan: &Plan<'_>) -> Result<ContainerCreateBody, SandboxError> {
    let spec = plan.spec;
    check(spec)?;
    let limits = &spec.limits;
    let mut labels = plan.extra_labels.clone();
    labels.insert(LABEL_APP.into(), spec.app_id.clone());
    labels.insert(LABEL_DAEMON.into(), plan.daemon_label.to_string());
    labels.insert(LABEL_APP_NAME.into(), spec.app_name.clone());
    labels.insert(LABEL_ISOLATION.into(), plan.isolation.as_str().into());
    let credentials = format!("{SOCKET_MOUNT}/{}", spec.credentials_file);
    let tmpfs = tmpfs_options(plan.flavor, spec);
    if plan.isolation == Isolation::Gvisor && plan.runtime.is_none() {
        return Err(refuse(format!(
            "app {} asks for gVisor but no gVisor runtime was named",
            spec.app_name
        )));
    }
    let host_config = HostConfig {
        mounts: Some(vec![
            bind(&spec.app_dir, APP_MOUNT),
            bind(&spec.socket_dir, SOCKET_MOUNT),
        ]),
        network_mode: Some(spec.network.clone().unwrap_or_else(|| "none".into())),
        memory: Some(to_i64(limits.memory_bytes)),
        memory_swap: Some(to_i64(limits.memory_bytes)),
        nano_cpus: Some(to_i64(limits.nano_cpus)),
        pids_limit: Some(to_i64(pids_limit(plan.isolation, limits.pids))),
        ulimits: Some(ulimits(plan)),
        runtime: plan.runtime.map(str::to_string),
        tmpfs: Some(HashMap::from([("/tmp".to_string(), tmpfs)])),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        init: Some(true),
        privileged: Some(false),
        // Restarts are the supervisor's (bounded, with backoff); removal is ours, after the
        // exit state has been read (auto-remove would race it).
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        auto_remove: Some(false),
        // json-file keeps a bounded copy the daemon can replay after its own restart.
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), spec.log_cap.max(4096).to_string()),
                ("max-file".to_string(), "1".to_string()),
            ])),
        }),
        storage_opt: plan
            .storage
            .map(|bytes| HashMap::from([("size".to_string(), bytes.to_string())])),
        ..Default::default()
    };
    let (program, args) = command(spec);
    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint: Some(vec![program]),
        cmd: Some(args),
        env: Some(vec![
            format!("FOLD_CLIENT_APP_ID={}", spec.app_id),
            format!("FOLD_CLIENT_SOCKET_DIR={SOCKET_MOUNT}"),
            format!("FOLD_CLIENT_CREDENTIALS={credentials}"),
            "FOLD_CLIENT_SANDBOX=docker".to_string(),
            format!("FOLD_CLIENT_ISOLATION={}", plan.isolation),
        ]),
        user: Some(format!("{}:{}", spec.uid, spec.gid)),
        working_dir: Some(APP_MOUNT.into()),
        labels: Some(labels),
        attach_stdin: Some(false),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        open_stdin: Some(false),
        stop_signal: Some("SIGTERM".into()),
        stop_timeout: Some(to_i64(plan.grace.as_secs().max(1))),
        host_config: Some(host_config),
        ..Default::default()
    })
}

/// What the container runs: its program and arguments (the holder of a warm container
/// runs the same program with the same arguments, given in its word).
pub fn command(spec: &LaunchSpec) -> (String, Vec<String>) {
    spec.command(format!("{APP_MOUNT}/{}", spec.binary))
}

/// The create request for a warm container of the app: [`create_body`] exactly, except that
/// the holder (mounted read-only from `holder` at [`HOLDER_MOUNT`]) runs first, with the
/// app's binary as its one argument, and waits on stdin, which only the daemon's attach
/// holds, for the launch's arguments; and that it carries [`LABEL_WARM`]. `plan` carries no
/// launch's labels: those are known only when a launch takes the container.
///
/// # Errors
///
/// As [`create_body`].
pub fn warm_body(plan: &Plan<'_>, holder: &Path) -> Result<ContainerCreateBody, SandboxError> {
    let mut body = create_body(plan)?;
    let (program, _) = command(plan.spec);
    body.entrypoint = Some(vec![HOLDER_MOUNT.to_string()]);
    body.cmd = Some(vec![program]);
    body.open_stdin = Some(true);
    body.stdin_once = Some(true);
    body.attach_stdin = Some(true);
    if let Some(labels) = body.labels.as_mut() {
        labels.insert(LABEL_WARM.into(), "prepared".into());
    }
    if let Some(mounts) = body.host_config.as_mut().and_then(|h| h.mounts.as_mut()) {
        mounts.push(bind(holder, HOLDER_MOUNT));
    }
    Ok(body)
}

/// The options of the app's `/tmp` tmpfs: no exec, no setuid, no devices, capped, owned
/// by the app's uid and gid.
fn tmpfs_options(flavor: Flavor, spec: &LaunchSpec) -> String {
    let size = spec.limits.tmpfs_bytes;
    match flavor {
        Flavor::Docker => format!(
            "rw,noexec,nosuid,nodev,size={size},uid={},gid={}",
            spec.uid, spec.gid
        ),
        // Podman refuses `uid=`/`gid=` ("unknown mount option"); `U` chowns the mount to
        // the container's user instead.
        Flavor::Podman => format!("rw,noexec,nosuid,nodev,size={size},U"),
    }
}

/// Host tasks a gVisor sandbox runs for itself (the sentry's and gofer's threads: 38 when
/// idle on this host class), which count against the container's pids cgroup.
pub const GVISOR_PIDS_OVERHEAD: u64 = 64;

/// Host tasks a gVisor sandbox needs per task of the app (measured on this host class with
/// the ptrace platform: 30 app processes took 236 host tasks beyond the idle sandbox, about
/// 8 each).
pub const GVISOR_HOST_TASKS_PER_TASK: u64 = 10;

/// The container's pids cgroup limit. Under runc it is the app's pids limit. Under gVisor
/// the app's tasks live inside the sandbox, where the sentry enforces the app's limit as
/// RLIMIT_NPROC (see [`rlimits`]); the cgroup then bounds the sandbox's host tasks, with room
/// for the app to reach its own limit. Were the cgroup the app's limit, the sandbox would
/// die at startup (measured: `--pids-limit 32` never starts) or when the app forks, instead
/// of the app's fork failing with EAGAIN.
pub fn pids_limit(isolation: Isolation, app_pids: u64) -> u64 {
    match isolation {
        Isolation::Container => app_pids,
        Isolation::Gvisor => app_pids
            .saturating_mul(GVISOR_HOST_TASKS_PER_TASK)
            .saturating_add(GVISOR_PIDS_OVERHEAD),
    }
}

/// RLIMIT_NPROC of a Podman container: below this host class's hard limit, far above
/// what an app's pids limit lets it reach.
const PODMAN_NPROC: u64 = 1024;

/// The rlimits set explicitly: open files always. Processes (RLIMIT_NPROC) under gVisor,
/// where the sentry enforces it on the app's tasks as the pids cgroup does under runc; and
/// on Podman, whose default rlimits exceed this host class's hard limits and so fail every
/// start (there the pids cgroup bounds the app, and RLIMIT_NPROC is only a ceiling).
fn ulimits(plan: &Plan<'_>) -> Vec<ResourcesUlimits> {
    let limits = &plan.spec.limits;
    rlimits(plan.flavor, plan.isolation, limits.nofile, limits.pids)
}

/// The rlimits of a container from their parts (the app's come through `ulimits`), for any
/// container the daemon creates: `doctor`'s probes too, since on Podman a container without
/// them does not start.
pub fn rlimits(
    flavor: Flavor,
    isolation: Isolation,
    nofile: u64,
    pids: u64,
) -> Vec<ResourcesUlimits> {
    let limit = |name: &str, value: u64| ResourcesUlimits {
        name: Some(name.into()),
        soft: Some(to_i64(value)),
        hard: Some(to_i64(value)),
    };
    let mut limits = vec![limit("nofile", nofile)];
    if isolation == Isolation::Gvisor {
        limits.push(limit("nproc", pids));
    } else if flavor == Flavor::Podman {
        limits.push(limit("nproc", PODMAN_NPROC));
    }
    limits
}

/// Splits an image reference into the `fromImage` and `tag` of a pull: `alpine` ->
/// (`alpine`, `latest`), `reg:5000/a/b:1` -> (`reg:5000/a/b`, `1`), digests stay whole.
pub fn pull_reference(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_string(), None);
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => {
            let repo = &image[..image.len() - tag.len() - 1];
            (repo.to_string(), Some(tag.to_string()))
        }
        None => (image.to_string(), Some("latest".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::ResourceLimits;
    use std::path::PathBuf;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            app_id: "app_0123456789ab".into(),
            app_name: "demo".into(),
            app_dir: PathBuf::from("/state/apps/app_0123456789ab"),
            binary: "demo_bin".into(),
            args: vec!["serve".into()],
            interpreter: None,
            socket_dir: PathBuf::from("/state/sockets/app_0123456789ab"),
            credentials_file: "credentials.json".into(),
            uid: 200_001,
            gid: 200_001,
            limits: ResourceLimits::default(),
            image: "alpine:latest".into(),
            pull: crate::sandbox::PullPolicy::Missing,
            isolation: crate::sandbox::IsolationRequest::Exactly(Isolation::Container),
            network: None,
            log_path: PathBuf::from("/state/logs/a.log"),
            log_cap: 1 << 20,
            capture: None,
            legacy_token: Some("secret-token".into()),
            labels: HashMap::new(),
        }
    }

    fn plan<'a>(spec: &'a LaunchSpec, extra: &'a HashMap<String, String>) -> Plan<'a> {
        Plan {
            spec,
            daemon_label: "d1",
            extra_labels: extra,
            storage: None,
            grace: Duration::from_secs(5),
            isolation: Isolation::Container,
            runtime: None,
            flavor: Flavor::Docker,
        }
    }

    #[test]
    fn gvisor_names_its_runtime_and_counts_the_sandboxs_own_tasks() {
        let spec = spec();
        let extra = HashMap::new();
        let mut gvisor = plan(&spec, &extra);
        gvisor.isolation = Isolation::Gvisor;
        assert!(
            create_body(&gvisor).is_err(),
            "gVisor without a runtime name"
        );
        gvisor.runtime = Some("runsc");
        let body = create_body(&gvisor).unwrap();
        let hc = body.host_config.unwrap();
        assert_eq!(hc.runtime.as_deref(), Some("runsc"));
        assert_eq!(
            hc.pids_limit,
            Some((64 * GVISOR_HOST_TASKS_PER_TASK + GVISOR_PIDS_OVERHEAD) as i64)
        );
        let nproc = hc
            .ulimits
            .unwrap()
            .into_iter()
            .find(|u| u.name.as_deref() == Some("nproc"));
        assert_eq!(
            nproc.and_then(|u| u.hard),
            Some(64),
            "the app's own limit, in the sentry"
        );
        let labels = body.labels.unwrap();
        assert_eq!(labels[LABEL_ISOLATION], "gvisor");
        assert!(body
            .env
            .unwrap()
            .contains(&"FOLD_CLIENT_ISOLATION=gvisor".to_string()));
    }

    #[test]
    fn podman_gets_the_tmpfs_and_rlimit_options_it_accepts() {
        let spec = spec();
        let extra = HashMap::new();
        let mut podman = plan(&spec, &extra);
        podman.flavor = Flavor::Podman;
        let hc = create_body(&podman).unwrap().host_config.unwrap();
        let tmpfs = &hc.tmpfs.unwrap()["/tmp"];
        assert!(tmpfs.ends_with(",U") && !tmpfs.contains("uid="), "{tmpfs}");
        let ulimits = hc.ulimits.unwrap();
        let names: Vec<_> = ulimits.iter().filter_map(|u| u.name.as_deref()).collect();
        assert_eq!(names, ["nofile", "nproc"]);
        assert_eq!(ulimits[1].hard, Some(PODMAN_NPROC as i64));
    }

    #[test]
    fn hardened_by_default_and_no_secret_in_env() {
        let spec = spec();
        let extra = HashMap::new();
        let body = create_body(&plan(&spec, &extra)).unwrap();
        let hc = body.host_config.clone().unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.memory, hc.memory_swap);
        assert_eq!(hc.memory, Some(256 << 20));
        assert_eq!(hc.nano_cpus, Some(1_000_000_000));
        assert_eq!(hc.pids_limit, Some(64));
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(hc.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(hc.init, Some(true));
        assert_eq!(hc.privileged, Some(false));
        assert_eq!(hc.storage_opt, None, "never set blindly");
        let tmpfs = &hc.tmpfs.unwrap()["/tmp"];
        assert!(tmpfs.contains("noexec") && tmpfs.contains("nosuid"));
        assert!(tmpfs.contains("uid=200001,gid=200001"), "{tmpfs}");
        let mounts = hc.mounts.unwrap();
        assert!(mounts.iter().all(|m| m.read_only == Some(true)));
        assert_eq!(mounts[1].target.as_deref(), Some(SOCKET_MOUNT));
        assert_eq!(body.user.as_deref(), Some("200001:200001"));
        assert_eq!(body.entrypoint, Some(vec!["/app/demo_bin".to_string()]));
        let env = body.env.unwrap().join("\n");
        assert!(
            !env.contains("secret-token") && !env.contains("TOKEN"),
            "{env}"
        );
        assert!(env.contains("FOLD_CLIENT_CREDENTIALS=/tmp/fold_client_sockets/credentials.json"));
        let labels = body.labels.unwrap();
        assert_eq!(labels[LABEL_APP], "app_0123456789ab");
        assert_eq!(labels[LABEL_DAEMON], "d1");
    }

    #[test]
    fn a_warm_container_differs_from_a_cold_one_only_by_the_holder_in_front() {
        let spec = spec();
        let extra = HashMap::new();
        let cold = create_body(&plan(&spec, &extra)).unwrap();
        let warm = warm_body(&plan(&spec, &extra), Path::new("/state/warm/fold_holder")).unwrap();
        assert_eq!(warm.entrypoint, Some(vec![HOLDER_MOUNT.to_string()]));
        assert_eq!(warm.cmd, Some(vec!["/app/demo_bin".to_string()]));
        assert_eq!((warm.open_stdin, warm.stdin_once), (Some(true), Some(true)));
        assert_eq!(warm.labels.as_ref().unwrap()[LABEL_WARM], "prepared");
        let mounts = warm.host_config.as_ref().unwrap().mounts.clone().unwrap();
        let holder = mounts.last().unwrap();
        assert_eq!(holder.target.as_deref(), Some(HOLDER_MOUNT));
        assert_eq!(holder.read_only, Some(true));
        // Everything else is the cold container's: the same hardening, limits and user.
        let mut back = warm;
        back.entrypoint.clone_from(&cold.entrypoint);
        back.cmd.clone_from(&cold.cmd);
        back.open_stdin = cold.open_stdin;
        back.stdin_once = cold.stdin_once;
        back.attach_stdin = cold.attach_stdin;
        back.labels.as_mut().unwrap().remove(LABEL_WARM);
        back.host_config
            .as_mut()
            .unwrap()
            .mounts
            .as_mut()
            .unwrap()
            .pop();
        assert_eq!(back, cold);
    }

    #[test]
    fn an_interpreter_runs_the_binary_as_its_script() {
        let mut spec = spec();
        spec.interpreter = Some("python3".into());
        let extra = HashMap::new();
        let cold = create_body(&plan(&spec, &extra)).unwrap();
        assert_eq!(cold.entrypoint, Some(vec!["python3".to_string()]));
        assert_eq!(cold.cmd, Some(vec!["/app/demo_bin".into(), "serve".into()]));
        // A warm container's holder runs the same program, given the same arguments.
        let warm = warm_body(&plan(&spec, &extra), Path::new("/h")).unwrap();
        assert_eq!(warm.cmd, Some(vec!["python3".to_string()]));
        assert_eq!(command(&spec).1, ["/app/demo_bin", "serve"]);
        for bad in ["", "sh -c", "../python", "py\nthon", "a/b"] {
            spec.interpreter = Some(bad.into());
            assert!(create_body(&plan(&spec, &extra)).is_err(), "{bad:?}");
        }
        spec.interpreter = Some("/usr/bin/python3".into());
        assert!(create_body(&plan(&spec, &extra)).is_ok());
    }

    #[test]
    fn refuses_root_and_host_network_and_sets_storage_only_when_asked() {
        let extra = HashMap::new();
        let mut root = spec();
        root.uid = 0;
        let err = create_body(&plan(&root, &extra)).unwrap_err().to_string();
        assert!(err.contains("per_app"), "{err}");
        let mut host = spec();
        host.network = Some("host".into());
        assert!(create_body(&plan(&host, &extra)).is_err());
        let mut named = spec();
        named.network = Some("appnet".into());
        let spec = named;
        let mut p = plan(&spec, &extra);
        p.storage = Some(1 << 30);
        let body = create_body(&p).unwrap();
        let hc = body.host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("appnet"));
        assert_eq!(hc.storage_opt.unwrap()["size"], (1u64 << 30).to_string());
    }

    #[test]
    fn pull_references() {
        let r = |s: &str| pull_reference(s);
        assert_eq!(r("alpine"), ("alpine".into(), Some("latest".into())));
        assert_eq!(r("alpine:3.20"), ("alpine".into(), Some("3.20".into())));
        assert_eq!(
            r("reg:5000/a/b:1"),
            ("reg:5000/a/b".into(), Some("1".into()))
        );
        assert_eq!(
            r("reg:5000/a/b"),
            ("reg:5000/a/b".into(), Some("latest".into()))
        );
        assert_eq!(r("a@sha256:ff"), ("a@sha256:ff".into(), None));
    }
}
