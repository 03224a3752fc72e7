//! Lifecycle against the engine: OOM kills, the restart policy, stop with grace and
//! SIGKILL, one-shot runs (through the CLI) with their timeout, images that cannot be had,
//! glibc binaries in a busybox image.

use super::{inspect, launch, ps_row, setup, steps, wait_for_text, DockerDaemon, Env, TIMEOUT};
use fold_client::admin::protocol::{
    LaunchRequest, RestartMode, RunRequest, StopRequest, WaitRequest,
};
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_is_reported_oom_killed() {
    let env = setup();
    let d = DockerDaemon::start("").await;
    let view = d.install("hog", &env, Some("24m")).await;
    let run = d
        .admin(RunRequest {
            app: "hog".into(),
            direct: false,
            output_cap: None,
            run_id: None,
            args: vec!["hog".into()],
            image: None,
            interpreter: None,
            timeout: Duration::from_millis(60_000),
        })
        .await
        .unwrap();
    assert_eq!(run.state, "oom_killed", "{run:?}");
    assert_eq!(run.exit_code, Some(137));
    assert!(!run.timed_out);
    let ps = ps_row(&d.config.admin_socket, "hog").await.unwrap();
    assert_eq!(ps.state, "oom_killed");
    let log = std::fs::read_to_string(&view.app.log).unwrap();
    assert!(log.contains("=== app oom_killed ==="), "{log}");
    assert!(
        inspect(run.container.as_deref().unwrap()).await.is_none(),
        "removed"
    );
    d.stop().await;
}

#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_oom_kill_is_noted_but_not_reported_as_the_apps() {
    let env = setup();
    let d = DockerDaemon::start("").await;
    // The app is a shell script: its child (dd with a 64 MiB buffer) is OOM-killed at 24 MiB,
    // the script itself carries on and exits 0. The engine flags the container `OOMKilled`
    // all the same (any process of it counts).
    let script = d.dir.path().join("child_hog.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ndd if=/dev/zero of=/dev/null bs=64M count=1\necho \"child ended: $?\"\nexit 0\n",
    )
    .unwrap();
    let script_env = Env {
        app: script,
        image: env.image.clone(),
    };
    let view = d.install("childhog", &script_env, Some("24m")).await;
    let run = d
        .admin(RunRequest {
            app: "childhog".into(),
            direct: false,
            output_cap: None,
            run_id: None,
            args: Vec::new(),
            image: None,
            interpreter: None,
            timeout: Duration::from_millis(60_000),
        })
        .await
        .unwrap();
    let log = std::fs::read_to_string(&view.app.log).unwrap();
    assert!(
        log.contains("child ended: 137"),
        "the child was not killed: {log}"
    );
    assert_eq!(run.state, "exited(0)", "{run:?}\n{log}");
    assert_eq!(run.exit_code, Some(0));
    // The OOM kill is not lost: in the note, the log and the audit.
    let oom = "another process in the container was OOM-killed";
    assert!(run.note.as_deref().unwrap_or("").contains(oom), "{run:?}");
    let ps = ps_row(&d.config.admin_socket, "childhog").await.unwrap();
    assert_eq!(ps.state, "exited(0)");
    assert!(ps.note.as_deref().unwrap_or("").contains(oom), "{ps:?}");
    assert!(log.contains(&format!("=== app exited(0); {oom}")), "{log}");
    d.shared.audit.flush().await;
    let audit = std::fs::read_to_string(d.config.audit_path()).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"event\":\"exit\"") && l.contains(&format!("exited(0); {oom}"))),
        "{audit}"
    );
    d.stop().await;
}

#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_app_restarts_per_policy_then_stops_restarting() {
    let env = setup();
    let d = DockerDaemon::start("").await;
    let view = d.install("crashy", &env, None).await;
    let r = d
        .admin(launch(
            "crashy",
            &["exit", "3"],
            RestartMode::OnFailure,
            Some(2),
        ))
        .await
        .unwrap();
    let first = r.container.clone().unwrap();
    let done = d
        .admin(WaitRequest {
            app: "crashy".into(),
            timeout: Duration::from_millis(60_000),
        })
        .await
        .unwrap();
    assert_eq!(done.state, "exited(3)");
    let ps = ps_row(&d.config.admin_socket, "crashy").await.unwrap();
    assert_eq!(ps.restarts, 2, "{ps:?}");
    assert_eq!(ps.note.as_deref(), Some("gave up after 2 restarts"));
    d.shared.audit.flush().await;
    let audit = std::fs::read_to_string(d.config.audit_path()).unwrap();
    let count = |event: &str| {
        audit
            .lines()
            .filter(|l| l.contains(&format!("\"event\":\"{event}\"")))
            .count()
    };
    assert_eq!(count("restart"), 2, "{audit}");
    assert_eq!(count("exit"), 3, "{audit}");
    assert_eq!(count("restart_gave_up"), 1);
    // No more restarts after giving up; every container was removed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ps_row(&d.config.admin_socket, "crashy")
            .await
            .unwrap()
            .state,
        "exited(3)"
    );
    assert!(inspect(&first).await.is_none());
    assert!(super::containers_of(&d.config.daemon_label)
        .await
        .is_empty());
    let log = std::fs::read_to_string(&view.app.log).unwrap();
    assert_eq!(log.matches("=== app exited(3) ===").count(), 3, "{log}");
    d.stop().await;
}

#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_ignoring_sigterm_is_gone_within_grace_plus_one_second() {
    let env = setup();
    let d = DockerDaemon::start("").await;
    let view = d.install("stubborn", &env, None).await;
    let log = view.app.log.clone();
    let r = d
        .admin(launch(
            "stubborn",
            &["ignore-term", "env", "sleep", "120"],
            RestartMode::OnFailure,
            None,
        ))
        .await
        .unwrap();
    let id = r.container.clone().unwrap();
    wait_for_text(&log, "\"step\":\"env\"", TIMEOUT).await;
    let grace = Duration::from_millis(1000);
    let start = Instant::now();
    let stopped = d
        .admin(StopRequest {
            app: "stubborn".into(),
            grace: Some(grace),
        })
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(stopped.state, "stopped");
    assert!(took >= grace, "SIGTERM was not ignored? {took:?}");
    assert!(took < grace + Duration::from_secs(1), "{took:?}");
    assert!(inspect(&id).await.is_none(), "gone");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        steps(&text, "ignore-term").len(),
        1,
        "init forwarded SIGTERM: {text}"
    );
    // Stopped on request: not restarted despite on-failure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ps_row(&d.config.admin_socket, "stubborn")
            .await
            .unwrap()
            .state,
        "stopped"
    );
    d.stop().await;
}

#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_runs_stream_output_and_are_killed_at_their_timeout() {
    let env = setup();
    let d = DockerDaemon::start("").await;
    d.install("job", &env, None).await;
    let out = cli_async(
        &d,
        &["app", "run", "job", "--timeout", "30s", "--", "query"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.contains("\"step\":\"query\"") && stdout.contains("\"ok\":true"),
        "{stdout}"
    );

    let out = cli_async(&d, &["app", "run", "job", "--", "exit", "5"]).await;
    assert_eq!(out.status.code(), Some(5), "{out:?}");

    let start = Instant::now();
    let out = cli_async(
        &d,
        &[
            "app",
            "run",
            "job",
            "--timeout",
            "2s",
            "--",
            "env",
            "sleep",
            "60",
        ],
    )
    .await;
    let took = start.elapsed();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(
        stdout.contains("\"step\":\"env\""),
        "output streamed: {stdout}"
    );
    assert!(stderr.contains("timed out after 2.0 s"), "{stderr}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let ps = ps_row(&d.config.admin_socket, "job").await.unwrap();
    assert_eq!(ps.state, "stopped");
    assert!(ps.note.as_deref().unwrap().contains("timeout"), "{ps:?}");
    assert!(
        super::containers_of(&d.config.daemon_label)
            .await
            .is_empty(),
        "removed"
    );

    let out = cli_async(&d, &["app", "ps"]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("job") && table.contains("stopped"),
        "{table}"
    );
    let out = cli_async(&d, &["app", "logs", "job"]).await;
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(
        logs.contains("\"step\":\"env\"") && logs.contains("=== app exited(5) ==="),
        "{logs}"
    );
    d.stop().await;
}

/// Runs the `fold_client` CLI against the daemon `d`.
pub(super) async fn cli_async(d: &DockerDaemon, args: &[&str]) -> Output {
    let state = d.config.state_dir.clone();
    let args: Vec<String> = args.iter().map(ToString::to_string).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fold_client"))
            .arg("--state-dir")
            .arg(&state)
            .args(&args)
            .env("DOCKER_HOST", fold_testkit::docker_host())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_is_a_clear_error_and_glibc_binary_warns() {
    let env = setup();
    let d = DockerDaemon::start("").await;
    d.install("ghost", &env, None).await;
    let err = d
        .admin(LaunchRequest {
            image: Some("foldclient/does-not-exist:latest".into()),
            ..LaunchRequest::new("ghost")
        })
        .await
        .unwrap_err();
    assert!(err.contains("foldclient/does-not-exist:latest"), "{err}");
    assert!(
        err.contains("docker load") && err.contains("--image"),
        "{err}"
    );
    let ps = ps_row(&d.config.admin_socket, "ghost").await.unwrap();
    assert!(ps.state.starts_with("failed"), "{ps:?}");

    // A glibc-dynamic binary in the busybox image: the host's `true` (Debian), or this test
    // binary, which is one too.
    use fold_client::sandbox::docker::{linkage, Linkage};
    let dynamic = ["/bin/true", "/usr/bin/true"]
        .map(PathBuf::from)
        .into_iter()
        .find(|p| matches!(linkage(p), Linkage::Dynamic(l) if l.contains("ld-linux")))
        .unwrap_or_else(|| std::env::current_exe().unwrap());
    let view = super::install(&d.config.admin_socket, "glibc", &dynamic, &env.image, None).await;
    assert!(
        view.warnings.iter().any(|w| w.contains("glibc")),
        "warned at install: {view:?}"
    );
    let run = d
        .admin(RunRequest {
            app: "glibc".into(),
            direct: false,
            output_cap: None,
            run_id: None,
            args: vec![],
            image: None,
            interpreter: None,
            timeout: Duration::from_millis(30_000),
        })
        .await
        .unwrap();
    let warnings = run.warnings.join("\n");
    assert!(
        warnings.contains("glibc") && warnings.contains("crt-static"),
        "{warnings}"
    );
    assert_ne!(run.exit_code, Some(0), "it cannot start there: {run:?}");
    d.stop().await;
}

#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_lifetime_is_a_hard_kill_without_restart() {
    let env = setup();
    let d = DockerDaemon::start("").await;
    d.install("mortal", &env, None).await;
    let start = Instant::now();
    let r = d
        .admin(LaunchRequest {
            args: vec!["sleep".into(), "60".into()],
            restart: Some(RestartMode::OnFailure),
            max_restarts: Some(3),
            max_lifetime: Some(Duration::from_millis(1500)),
            ..LaunchRequest::new("mortal")
        })
        .await
        .unwrap();
    let done = d
        .admin(WaitRequest {
            app: "mortal".into(),
            timeout: Duration::from_millis(30_000),
        })
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(done.state, "stopped");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let ps = ps_row(&d.config.admin_socket, "mortal").await.unwrap();
    assert_eq!(
        ps.note.as_deref(),
        Some("killed: maximum lifetime exceeded"),
        "{ps:?}"
    );
    assert_eq!(ps.restarts, 0, "never restarted");
    assert!(inspect(r.container.as_deref().unwrap()).await.is_none());
    d.stop().await;
}

/// `[container] pull`: `never` launches a present image and refuses a missing one without
/// asking a registry; `always` pulls even an image the engine has (here a local-only image,
/// so the pull, and with it the launch, fails).
#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_policy_decides_whether_an_image_is_pulled() {
    let env = setup();
    let never = DockerDaemon::start("[container]\npull = \"never\"\n").await;
    never.install("present", &env, None).await;
    never
        .admin(launch("present", &["exit", "0"], RestartMode::Never, None))
        .await
        .unwrap();
    never.install("absent", &env, None).await;
    let err = never
        .admin(LaunchRequest {
            image: Some("foldclient/does-not-exist:latest".into()),
            ..LaunchRequest::new("absent")
        })
        .await
        .unwrap_err();
    assert!(
        err.contains("foldclient/does-not-exist:latest") && err.contains("`never`"),
        "{err}"
    );
    never.stop().await;

    let always = DockerDaemon::start("[container]\npull = \"always\"\n").await;
    always.install("local", &env, None).await;
    let err = always
        .admin(launch("local", &["exit", "0"], RestartMode::Never, None))
        .await
        .unwrap_err();
    assert!(
        err.contains(&env.image) && !err.contains("`never`"),
        "{err}"
    );
    always.stop().await;
}

/// A job in a hardened container returns every byte of its output up to the cap, and the
/// `--json` result tells an OOM kill (issue 16; `jobs` runs the same on the host).
#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_job_keeps_its_output_to_the_cap_and_json_tells_an_oom_kill() {
    let env = setup();
    let d = DockerDaemon::start("").await;
    let script = d.dir.path().join("flood.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nhead -c 67108864 /dev/zero | tr '\\0' 'y'\necho done >&2\n",
    )
    .unwrap();
    let script_env = Env {
        app: script,
        image: env.image.clone(),
    };
    d.install("flood", &script_env, None).await;
    let out = cli_async(&d, &["--json", "app", "run", "flood", "--timeout", "60s"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let r: fold_client::admin::protocol::RunResponse = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(r.sandboxed && r.container.is_some(), "{r:?}");
    let cap = 8 << 20;
    assert_eq!(
        (r.stdout.captured, r.stdout.dropped),
        (cap, (64 << 20) - cap)
    );
    let kept = std::fs::read(&r.stdout.path).unwrap();
    assert!(kept.len() as u64 == cap && kept.iter().all(|&b| b == b'y'));
    assert_eq!(std::fs::read(&r.stderr.path).unwrap(), b"done\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("output truncated: 58720256 bytes of stdout dropped past the 8 MiB cap"),
        "{stderr}"
    );

    d.install("hog", &env, Some("24m")).await;
    let out = cli_async(&d, &["--json", "app", "run", "hog", "--", "hog"]).await;
    let r: fold_client::admin::protocol::RunResponse = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(137), "{r:?}");
    assert!(r.oom_killed && !r.timed_out, "{r:?}");
    assert_eq!((r.exit_code, r.signal), (Some(137), Some(9)), "{r:?}");
    d.stop().await;
}

/// `fold_client run` in a container: a script from the base image's shell, run as a
/// throwaway app with the hardening of any app; no app, container or output is left.
#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_container_job_runs_hardened_and_leaves_nothing_behind() {
    let env = setup();
    let d = DockerDaemon::start("").await;
    let script = d.dir.path().join("whoami.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"uid $(id -u) net $(ls /sys/class/net | tr '\\n' ' ')\"\ntouch /probe 2>/dev/null || echo read-only\n",
    )
    .unwrap();
    let image = env.image.clone();
    let out = cli_async(
        &d,
        &[
            "--json",
            "run",
            "--image",
            &image,
            "--timeout",
            "60s",
            script.to_str().unwrap(),
        ],
    )
    .await;
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(r["sandboxed"], true, "{r}");
    let said = r["output"]["stdout"].as_str().unwrap();
    assert!(!said.contains("uid 0 "), "not root: {said}");
    assert!(said.contains("net lo"), "no network but loopback: {said}");
    assert!(said.contains("read-only"), "read-only root: {said}");
    let admin = &d.config.admin_socket;
    let apps = fold_client::admin::AdminClient::new(admin, Duration::from_secs(10))
        .call(fold_client::admin::protocol::ListRequest {})
        .await
        .unwrap()
        .apps;
    assert!(apps.is_empty(), "{apps:?}");
    assert!(
        super::containers_of(&d.config.daemon_label)
            .await
            .is_empty(),
        "no container left"
    );
    d.stop().await;
}

/// The code-execution case: a Python script in a Python image built offline from the
/// host's own Python, run by `--interpreter python3` (`python3 /app/FILE ARGS`) and by its
/// `#!/usr/bin/env python3` line; and a shell script without a `#!` line, by
/// `--interpreter sh` in the base image. An interpreter that is not a command is refused.
#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_by_their_interpreter_in_a_python_image_built_offline() {
    let env = setup();
    let python = tokio::task::spawn_blocking(fold_testkit::ensure_python_image)
        .await
        .unwrap()
        .expect("python image");
    let d = DockerDaemon::start("").await;
    let run = |name: &str, text: &str, flags: Vec<String>| {
        let path = d.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let mut args = vec![
            "--json".to_string(),
            "run".into(),
            "--timeout".into(),
            "60s".into(),
        ];
        args.extend(flags);
        args.push(path.display().to_string());
        args.extend(["--".to_string(), "x y".into(), "z".into()]);
        let d = &d;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = cli_async(d, &args).await;
            let r: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
            r
        }
    };
    let script = "import sys\nprint(sys.argv[0], sys.argv[1:], sum(range(10)))\n";
    let flags = vec![
        "--image".to_string(),
        python.clone(),
        "--interpreter".into(),
        "python3".into(),
    ];
    let r = run("calc.py", script, flags).await;
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(
        r["output"]["stdout"], "/app/calc.py ['x y', 'z'] 45\n",
        "{r}"
    );
    let shebang = format!("#!/usr/bin/env python3\n{script}");
    let r = run(
        "shebang.py",
        &shebang,
        vec!["--image".into(), python.clone()],
    )
    .await;
    assert_eq!(
        r["output"]["stdout"], "/app/shebang.py ['x y', 'z'] 45\n",
        "{r}"
    );
    let flags = vec![
        "--image".to_string(),
        env.image.clone(),
        "--interpreter".into(),
        "sh".into(),
    ];
    let r = run("plain.sh", "echo \"$0:$1:$2\"\n", flags).await;
    assert_eq!(r["output"]["stdout"], "/app/plain.sh:x y:z\n", "{r}");
    let path = d.dir.path().join("plain.sh");
    let out = cli_async(
        &d,
        &["run", "--interpreter", "sh -c", path.to_str().unwrap()],
    )
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must be a command name"), "{stderr}");
    d.stop().await;
}
