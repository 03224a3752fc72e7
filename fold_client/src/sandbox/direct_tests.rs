//! Tests of the direct backend with real processes.

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Instant;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A temp app dir holding `script` as the binary, usable by uid 65534 when run as root.
fn app(script: &str) -> (tempfile::TempDir, LaunchSpec) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("app");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("run.sh"), format!("#!/bin/sh\n{script}\n")).unwrap();
    for p in [tmp.path(), &dir, &dir.join("run.sh")] {
        chmod(p, 0o755);
    }
    let spec = LaunchSpec {
        app_id: "app1".into(),
        app_name: "demo".into(),
        app_dir: dir,
        binary: "run.sh".into(),
        args: vec!["a1".into()],
        interpreter: None,
        socket_dir: PathBuf::from("/run/fold/app1"),
        credentials_file: "creds".into(),
        uid: 65534,
        gid: 65534,
        limits: ResourceLimits {
            nofile: 256,
            ..ResourceLimits::default()
        },
        image: String::new(),
        pull: crate::sandbox::PullPolicy::Missing,
        isolation: crate::sandbox::IsolationRequest::Auto,
        network: None,
        log_path: tmp.path().join("logs/app1.log"),
        log_cap: 1 << 20,
        capture: None,
        legacy_token: None,
        labels: HashMap::new(),
    };
    (tmp, spec)
}

/// Launches, waits for the end, returns the final state and the log.
async fn run(spec: &LaunchSpec) -> (AppState, String) {
    let sbx = DirectSandbox::new();
    assert!(matches!(
        sbx.launch(spec).await.map(|l| l.state),
        Ok(AppState::Running { pid: Some(_) })
    ));
    let state = tokio::time::timeout(Duration::from_secs(5), sbx.wait(&spec.app_id)).await;
    (
        state.unwrap().unwrap(),
        std::fs::read_to_string(&spec.log_path).unwrap(),
    )
}

/// Polls the log until a stdout line starts with `key=`; returns the rest of it.
async fn logged(spec: &LaunchSpec, key: &str) -> String {
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(&spec.log_path).unwrap_or_default();
        let want = format!("stdout: {key}=");
        if let Some(v) = log.lines().find_map(|l| l.strip_prefix(want.as_str())) {
            return v.to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "no {key} in {log}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (up to 1 s: a killed process takes a moment to die) until no pid is alive.
fn assert_gone(pids: &[String]) {
    let start = Instant::now();
    while pids.iter().any(|p| alive(p)) {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "still alive: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is a live (non-zombie) process.
fn alive(pid: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
    matches!(state, Some(c) if c != 'Z' && c != 'X')
}

#[tokio::test]
async fn environment_is_exactly_the_fold_client_set() {
    let (_tmp, mut spec) = app("env; echo \"cwd=$(pwd) args=$*\"");
    let (state, log) = run(&spec).await;
    assert_eq!(state, AppState::Exited { code: 0 });
    let mut vars: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("stdout: "))
        .collect();
    assert_eq!(
        vars.pop().unwrap(),
        format!("cwd={} args=a1", spec.app_dir.display())
    );
    let home = format!("HOME={}", spec.app_dir.display());
    let path = format!("PATH={SAFE_PATH}");
    for want in [&home, &path, "LANG=C.UTF-8", "FOLD_CLIENT_SANDBOX=direct"] {
        assert!(vars.contains(&want), "missing {want} in {vars:?}");
    }
    assert!(vars.contains(&"FOLD_CLIENT_APP_ID=app1"));
    assert!(vars.contains(&"FOLD_CLIENT_SOCKET_DIR=/run/fold/app1"));
    assert!(vars.contains(&"FOLD_CLIENT_CREDENTIALS=/run/fold/app1/creds"));
    // sh itself may add PWD, SHLVL, OLDPWD and _; nothing else is inherited.
    let allowed = ["HOME", "PATH", "LANG", "PWD", "SHLVL", "OLDPWD", "_"];
    let names = vars.iter().filter_map(|l| l.split('=').next());
    let extra: Vec<&str> = names
        .filter(|n| !allowed.contains(n) && !n.starts_with("FOLD_CLIENT_"))
        .collect();
    assert!(extra.is_empty(), "unexpected vars: {extra:?}");
    assert_eq!(
        vars.iter()
            .filter(|v| v.starts_with("FOLD_CLIENT_"))
            .count(),
        4
    );

    spec.legacy_token = Some("tok-secret".into());
    let (_, log) = run(&spec).await;
    assert!(log.contains("stdout: FOLD_CLIENT_APP_TOKEN=tok-secret\n"));
}

#[tokio::test]
async fn output_is_logged_under_the_marker_and_exit_code_recorded() {
    let (_tmp, spec) = app("echo to-out; echo to-err >&2; exit 3");
    let (state, log) = run(&spec).await;
    assert_eq!(state, AppState::Exited { code: 3 });
    let first = log.lines().next().unwrap();
    assert_eq!(
        first,
        "=== NOT SANDBOXED (direct mode): demo runs as a host process ==="
    );
    assert!(
        log.contains("stdout: to-out\n") && log.contains("stderr: to-err\n"),
        "{log}"
    );
    assert!(log.ends_with("=== app exited(3) ===\n"), "{log}");

    let (_tmp, spec) = app("kill -9 $$");
    assert_eq!(run(&spec).await.0, AppState::Exited { code: 137 });
}

#[tokio::test]
async fn stop_kills_a_term_ignoring_group_after_grace() {
    let (_tmp, spec) = app("trap '' TERM; sleep 60 & echo bg=$!; while :; do sleep 0.1; done");
    let sbx = DirectSandbox::new();
    sbx.launch(&spec).await.unwrap();
    assert!(matches!(
        sbx.launch(&spec).await,
        Err(SandboxError::AlreadyRunning(_))
    ));
    let bg = logged(&spec, "bg").await;
    assert!(alive(&bg));
    let start = Instant::now();
    assert_eq!(
        sbx.stop("app1", Duration::from_millis(500)).await.unwrap(),
        AppState::Stopped
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert_eq!(sbx.state("app1"), Some(AppState::Stopped));
    assert_gone(&[bg]);
    assert!(matches!(
        sbx.stop("app1", Duration::ZERO).await,
        Err(SandboxError::NotRunning(_))
    ));
    assert!(sbx.launch(&spec).await.is_ok(), "relaunch after stop");
    assert_eq!(
        sbx.stop("app1", Duration::from_millis(100)).await.unwrap(),
        AppState::Stopped
    );
}

#[test]
fn dropping_the_runtime_kills_the_app_group() {
    // Whether or not the reaper task ever ran, dropping it kills the whole group.
    for reaper_ran in [false, true] {
        let (_tmp, spec) = app("sleep 60 & echo bg=$!; wait");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sbx = DirectSandbox::new();
        rt.block_on(sbx.launch(&spec)).unwrap();
        let mut pids = vec![sbx.pid("app1").unwrap().to_string()];
        if reaper_ran {
            pids.push(rt.block_on(logged(&spec, "bg")));
        }
        drop(rt);
        assert_gone(&pids);
    }
}

#[tokio::test]
async fn nofile_limit_and_uid_are_applied() {
    let (_tmp, spec) = app("echo nofile=$(ulimit -n) uid=$(id -u) gid=$(id -g) groups=$(id -G)");
    let (_, log) = run(&spec).await;
    assert!(log.contains("stdout: nofile=256 "), "{log}");
    if nix::unistd::geteuid().is_root() {
        assert!(log.contains("uid=65534 gid=65534 groups=65534\n"), "{log}");
    } else {
        assert!(
            log.contains(&format!("uid={} ", nix::unistd::geteuid())),
            "{log}"
        );
    }
}

#[tokio::test]
async fn spawn_failures_name_the_binary() {
    let (_tmp, mut spec) = app("exit 0");
    chmod(&spec.app_dir.join("run.sh"), 0o644);
    let sbx = DirectSandbox::new();
    for binary in ["missing", "run.sh", "../run.sh"] {
        spec.binary = binary.into();
        match sbx.launch(&spec).await {
            Err(SandboxError::Spawn { binary: b, .. }) => {
                assert_eq!(b, spec.app_dir.join(binary))
            }
            other => panic!("{binary}: {other:?}"),
        }
        assert!(matches!(sbx.state("app1"), Some(AppState::Failed { .. })));
    }
    assert!(matches!(
        sbx.stop("app1", Duration::ZERO).await,
        Err(SandboxError::NotRunning(_))
    ));
    assert_eq!(sbx.wait("nope").await, None);
}
