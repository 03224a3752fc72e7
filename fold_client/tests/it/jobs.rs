//! Jobs (`app run`) return every byte of their output up to the cap, each stream on its
//! own, and say exactly what they dropped (issue 16). Before, the CLI followed the app's
//! rotating log: a job printing 64 MiB showed a quarter of it and exited 0 without a word.
//! The real `fold_client` binary runs each job, placed on the host (these tests need no
//! engine; `docker::lifecycle` runs the same in a container).

use crate::support::{
    cli, config_in, install_script, per_app_config, start_with, traversable_tempdir, TestDaemon,
};
use fold_client::admin::protocol::{InstallRequest, ListRequest, RunResponse, StatusRequest};
use fold_client::config::Config;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// A daemon that may run apps: as root, with a uid per app (a root daemon runs no app as
/// root); otherwise as this user.
async fn daemon() -> TestDaemon {
    daemon_with(|_| {}).await
}

/// [`daemon`], its configuration changed by `tune`.
async fn daemon_with(tune: impl FnOnce(&mut Config)) -> TestDaemon {
    let dir = traversable_tempdir();
    let mut config = if nix::unistd::geteuid().is_root() {
        per_app_config(&dir)
    } else {
        config_in(dir.path(), "")
    };
    tune(&mut config);
    start_with(dir, config).await
}

/// 64 MiB of `y` on stdout, then `done` on stderr.
const FLOOD: &str = "#!/bin/sh\nhead -c 67108864 /dev/zero | tr '\\0' 'y'\necho done >&2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_printing_64_mib_gets_every_byte_up_to_the_cap_and_an_exact_notice() {
    let d = daemon().await;
    install_script(&d, "flood", FLOOD).await;
    let state = &d.config.state_dir;
    let out = cli(
        state,
        &[
            "app",
            "run",
            "flood",
            "--direct",
            "--raw",
            "--timeout",
            "60s",
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cap = 8 << 20;
    assert_eq!(out.stdout.len(), cap, "stdout is exactly the cap");
    assert!(
        out.stdout.iter().all(|&b| b == b'y'),
        "and every byte is the job's"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dropped = (64 << 20) - cap;
    assert!(
        stderr.contains("(dev mode)\ndone\n"),
        "the job's stderr, on stderr: {stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "output truncated: {dropped} bytes of stdout dropped past the 8 MiB cap"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("of stderr dropped"), "{stderr}");

    // A smaller cap for one run, and the result as JSON.
    let out = cli(
        state,
        &[
            "--json",
            "app",
            "run",
            "flood",
            "--direct",
            "--output-cap",
            "1000",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    let r: RunResponse = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r.exit_code, r.signal, r.timed_out, r.oom_killed),
        (Some(0), None, false, false)
    );
    assert_eq!(r.output_cap, 1000);
    assert_eq!(
        (r.stdout.captured, r.stdout.dropped),
        (1000, (64 << 20) - 1000)
    );
    assert_eq!((r.stderr.captured, r.stderr.dropped), (5, 0));
    assert_eq!(std::fs::read(&r.stdout.path).unwrap(), vec![b'y'; 1000]);
    assert_eq!(std::fs::read(&r.stderr.path).unwrap(), b"done\n");
    let mode = std::fs::metadata(&r.stdout.path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the job's output is the daemon's alone"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("output truncated: 67107864 bytes of stdout dropped past the 1000 B cap"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_results_say_how_a_job_ended_exit_crash_and_timeout() {
    let d = daemon().await;
    install_script(&d, "ends", "#!/bin/sh\ncase \"$1\" in\n  exit) echo bye; exit 3 ;;\n  crash) kill -SEGV $$ ;;\n  hang) echo waiting; sleep 60 ;;\nesac\n").await;
    let state = &d.config.state_dir;
    let run = |how: &'static str, timeout: &'static str| {
        let state = state.clone();
        async move {
            let out = cli(
                &state,
                &[
                    "--json",
                    "app",
                    "run",
                    "ends",
                    "--direct",
                    "--timeout",
                    timeout,
                    "--",
                    how,
                ],
            )
            .await;
            let r: RunResponse = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
            (out.status.code(), r)
        }
    };
    let (code, r) = run("exit", "20s").await;
    assert_eq!(code, Some(3));
    assert_eq!(
        (r.exit_code, r.signal, r.timed_out, r.oom_killed),
        (Some(3), None, false, false)
    );
    assert_eq!(std::fs::read(&r.stdout.path).unwrap(), b"bye\n");

    let (code, r) = run("crash", "20s").await;
    assert_eq!(code, Some(139));
    assert_eq!(
        (r.exit_code, r.signal, r.timed_out),
        (Some(139), Some(11), false)
    );

    let (code, r) = run("hang", "1s").await;
    assert_eq!(code, Some(124), "{r:?}");
    assert!(r.timed_out, "{r:?}");
    assert_eq!(r.exit_code, None, "stopped at the timeout: {r:?}");
    assert_eq!(std::fs::read(&r.stdout.path).unwrap(), b"waiting\n");
    // Only the last run's output is kept.
    let runs: Vec<_> = std::fs::read_dir(r.stdout.path.parent().unwrap().parent().unwrap())
        .unwrap()
        .collect();
    assert_eq!(runs.len(), 1);
    d.stop().await;
}

/// Writes `body` as an executable script in the test's directory; returns its path.
fn script(d: &TestDaemon, name: &str, body: &str) -> String {
    let path = d.dir.path().join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_string_lossy().into_owned()
}

/// What a one-off job must not leave: an app, its socket directory, its output.
async fn assert_nothing_left(d: &TestDaemon, app_id: &str) {
    let apps = d.admin(ListRequest {}).await.unwrap().apps;
    assert!(apps.is_empty(), "apps left: {apps:?}");
    assert!(
        !d.config.socket_root.join(app_id).exists(),
        "socket directory left"
    );
    let jobs = d.admin(StatusRequest {}).await.unwrap().jobs_dir;
    let left: Vec<_> = std::fs::read_dir(&jobs)
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "job output left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_job_runs_once_and_leaves_nothing_behind() {
    let d = daemon().await;
    let job = script(
        &d,
        "hello.sh",
        "#!/bin/sh\necho \"hello $1 $2\"\necho warn >&2\nexit 4\n",
    );
    let state = &d.config.state_dir;
    let out = cli(state, &["run", "--direct", &job, "--", "a", "b"]).await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello a b\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("warn\n"));

    let out = cli(state, &["--json", "run", "--direct", &job, "--", "c", "d"]).await;
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["exit_code"], 4, "{r}");
    assert_eq!(r["output"]["stdout"], "hello c d\n", "{r}");
    assert_eq!(r["output"]["stderr"], "warn\n", "{r}");
    let name = r["name"].as_str().unwrap();
    assert!(name.starts_with("job-"), "{name}");
    assert_nothing_left(&d, r["id"].as_str().unwrap()).await;

    // Every step is audited.
    d.shared.audit.flush().await;
    let audit = std::fs::read_to_string(d.config.audit_path()).unwrap();
    for event in ["install", "run", "remove"] {
        assert!(
            audit
                .lines()
                .any(|l| l.contains(name) && l.contains(&format!("\"event\":\"{event}\""))),
            "no {event} event for {name}: {audit}"
        );
    }
    // The names are the jobs' alone.
    let taken = d.admin(InstallRequest::new("job-mine", job)).await;
    assert!(taken.unwrap_err().contains("one-off jobs"));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_off_jobs_past_the_concurrency_wait_their_turn() {
    let d = daemon_with(|c| c.max_concurrent_jobs = 1).await;
    let job = script(&d, "nap.sh", "#!/bin/sh\nsleep 1\necho rested\n");
    let state = d.config.state_dir.clone();
    let started = Instant::now();
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (state, job) = (state.clone(), job.clone());
            tokio::spawn(async move { cli(&state, &["run", "--direct", &job]).await })
        })
        .collect();
    for run in runs {
        let out = run.await.unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "rested\n");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "one at a time: both took {took:?}"
    );
    let apps = d.admin(ListRequest {}).await.unwrap().apps;
    assert!(apps.is_empty(), "{apps:?}");
    d.stop().await;
}

/// A daemon stopped while a one-off job runs removes the job's app when it starts again
/// (and only that app: the job's marker names it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cut_short_by_a_daemon_stop_is_removed_at_the_next_start() {
    let d = daemon().await;
    let keep = d
        .admin(InstallRequest::new(
            "kept",
            script(&d, "kept.sh", "#!/bin/sh\n"),
        ))
        .await;
    assert!(keep.is_ok(), "{keep:?}");
    let job = script(&d, "long.sh", "#!/bin/sh\nsleep 30\n");
    let state = d.config.state_dir.clone();
    let running = tokio::spawn(async move { cli(&state, &["run", "--direct", &job]).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d
        .admin(ListRequest {})
        .await
        .unwrap()
        .apps
        .iter()
        .any(|a| a.name.starts_with("job-"))
    {
        assert!(Instant::now() < deadline, "the job's app never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let config = d.config.clone();
    let dir = d.stop().await;
    running.abort();
    let d = start_with(dir, config).await;
    let names: Vec<String> = d
        .admin(ListRequest {})
        .await
        .unwrap()
        .apps
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["kept"], "the job's app is gone, the other stays");
    d.stop().await;
}
