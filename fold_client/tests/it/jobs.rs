//! Jobs (`app run`) return every byte of their output up to the cap, each stream on its
//! own, and say exactly what they dropped (issue 16). Before, the CLI followed the app's
//! rotating log: a job printing 64 MiB showed a quarter of it and exited 0 without a word.
//! The real `fold_client` binary runs each job, placed on the host (these tests need no
//! engine; `docker::lifecycle` runs the same in a container).

use crate::support::{cli, install_script, per_app_daemon, start_daemon, TestDaemon};
use fold_client::admin::protocol::RunResponse;
use std::os::unix::fs::PermissionsExt;

/// A daemon that may run apps: as root, with a uid per app (a root daemon runs no app as
/// root); otherwise as this user.
async fn daemon() -> TestDaemon {
    match per_app_daemon().await {
        Some(d) => d,
        None => start_daemon("").await,
    }
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
