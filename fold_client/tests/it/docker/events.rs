//! `fold_client events`: the live stream of lifecycle and decision events, from the real
//! daemon with a real container app: each kind (grant, revoke, rotate, launch, deny, exit,
//! oom, restart, stop) arrives as it happens, in order, as JSON lines from the CLI, and
//! nothing else does (allowed requests stay in the audit).

use super::{launch, setup, DockerDaemon, TIMEOUT};
use fold_client::admin::protocol::{
    EventView, GrantRequest, RestartMode, RotateRequest, StopRequest, UngrantRequest,
};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[ignore = "needs a Docker engine"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_each_kind_in_order_as_json() {
    let env = setup();
    let d = DockerDaemon::start("").await;
    let view = d.install("ev", &env, Some("32m")).await;
    // The CLI follows the app's events, one JSON object per line.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_fold_client"))
        .arg("--state-dir")
        .arg(&d.config.state_dir)
        .args(["--json", "events", "--app", "ev"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<EventView>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let event: EventView = serde_json::from_str(&line).expect("one JSON event per line");
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    // Until the follower has subscribed, a harmless change (an empty warm pool) is
    // repeated; once it shows one, nothing is missed from here on.
    let start = Instant::now();
    loop {
        let nothing = fold_client::admin::protocol::WarmRequest {
            app: "ev".into(),
            count: 0,
        };
        d.admin(nothing).await.unwrap();
        if rx
            .recv_timeout(Duration::from_millis(200))
            .is_ok_and(|e| e.kind == "warm")
        {
            break;
        }
        assert!(start.elapsed() < TIMEOUT, "the follower never subscribed");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    while rx.try_recv().is_ok() {}
    d.admin(GrantRequest {
        app: "ev".into(),
        grants: vec!["query:item".parse().unwrap()],
    })
    .await
    .unwrap();
    d.admin(UngrantRequest {
        app: "ev".into(),
        grants: vec!["*:post".parse().unwrap()],
    })
    .await
    .unwrap();
    d.admin(RotateRequest { app: "ev".into() }).await.unwrap();
    // A query it may no longer make (denied), then it exits.
    d.admin(launch("ev", &["query"], RestartMode::Never, None))
        .await
        .unwrap();
    let wait = |kind: &'static str| {
        let start = Instant::now();
        let mut seen = Vec::new();
        loop {
            let left = TIMEOUT.saturating_sub(start.elapsed());
            let event = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {kind} event; saw {seen:?}"));
            let done = event.kind == kind;
            seen.push(event);
            if done {
                return seen;
            }
        }
    };
    let mut events = wait("exit");
    // It runs out of memory, is restarted, and is stopped while it waits to hog again.
    d.admin(launch(
        "ev",
        &["sleep", "1", "hog"],
        RestartMode::OnFailure,
        Some(1),
    ))
    .await
    .unwrap();
    events.extend(wait("restart"));
    d.admin(StopRequest {
        app: "ev".into(),
        grace: Some(Duration::from_secs(1)),
    })
    .await
    .unwrap();
    events.extend(wait("stop"));
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    eprintln!("events: {events:#?}");
    assert_eq!(
        kinds,
        [
            "grant", "revoke", "rotate", // decisions of the operator
            "launch", "deny", "exit", // the first run: a denied request, then its exit
            "launch", "oom", "restart", // the second: OOM-killed, restarted by its policy
            "exit", "stop", // the restarted run, stopped
        ],
    );
    assert!(events[9].detail.contains("stopped"), "{:?}", events[9]);
    assert!(events
        .iter()
        .all(|e| e.app.as_deref() == Some("ev") && e.app_id == view.app.id));
    assert!(events.windows(2).all(|w| w[0].ts <= w[1].ts), "in order");
    let deny = events.iter().find(|e| e.kind == "deny").unwrap();
    assert!(deny.detail.contains("on post: not_granted"), "{deny:?}");
    let _ = follower.kill();
    let _ = follower.wait();
    d.stop().await;
}
