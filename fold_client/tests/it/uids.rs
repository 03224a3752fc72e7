//! Per-app uids belong to the app alone, written as the attacks (issue 12, part 2):
//! (a) another local user's subordinate range covers the uid, (b) a second daemon on the
//! host hands out the same uid, (c) a process the removed app left behind is still running
//! when its uid is handed to the next app. Root only (per-app uids need root); the host's
//! user databases are replaced by files of the test's own, so nothing on the host changes.

use crate::support::{start_with, TestDaemon};
use fold_client::admin::protocol::{LaunchRequest, RemoveRequest};
use fold_client::config::{Config, FileConfig, Overrides};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A base of its own per test: far from every real range and from other test modules'.
fn fresh_base() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    3_700_000_000 + (std::process::id() % 10_000) * 1_000 + n * 100
}

/// The host of a test: its user databases and its shared reservation directory.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::Builder::new()
            .prefix("fcuid")
            .tempdir_in("/tmp")
            .unwrap();
        for name in ["passwd", "group", "subuid", "subgid"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        Host { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn append(&self, name: &str, line: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.file(name))
            .unwrap();
        writeln!(f, "{line}").unwrap();
    }

    fn reservations(&self) -> PathBuf {
        self.file("uids")
    }

    /// A per-app-uid daemon's config, its state in `state`, on this host.
    fn config(&self, state: &Path, base: u32) -> Config {
        let text = format!(
            "uid_mode = \"per_app\"\nuid_base = {base}\nuid_reservation_dir = \"{}\"\n\
             passwd_file = \"{}\"\ngroup_file = \"{}\"\nsubuid_file = \"{}\"\nsubgid_file = \"{}\"\n",
            self.reservations().display(),
            self.file("passwd").display(),
            self.file("group").display(),
            self.file("subuid").display(),
            self.file("subgid").display(),
        );
        let file = FileConfig::parse(&text, Path::new("test.toml")).unwrap();
        let over = Overrides {
            state_dir: Some(state.to_path_buf()),
            ..Overrides::default()
        };
        Config::build(file, over, 0).unwrap()
    }

    async fn daemon(&self, base: u32) -> TestDaemon {
        let dir = tempfile::Builder::new()
            .prefix("fc")
            .tempdir_in("/tmp")
            .unwrap();
        let config = self.config(&dir.path().join("state"), base);
        start_with(dir, config).await
    }
}

async fn install(d: &TestDaemon, name: &str) -> (String, u32) {
    let creds = d.install(name, &["query:post"], None).await;
    let app = d.shared.registry.get(&creds.app_id).unwrap();
    assert_eq!(app.uid, app.gid, "gid equals uid");
    (app.id.clone(), app.uid)
}

/// (a) Debian's `useradd` gave another user the subordinate range covering the per-app
/// uids; with `unshare --map-users` that user could become the app. Such uids are never
/// handed out, nor those of users and groups, and an overlap that appears after install
/// refuses the launch, naming the entry and the fix.
#[tokio::test]
async fn a_uid_inside_a_subordinate_range_or_a_user_database_is_never_handed_out() {
    if !is_root() {
        return;
    }
    let host = Host::new();
    let base = fresh_base();
    host.append("subuid", &format!("mallory:{}:2", base + 1));
    host.append("subgid", &format!("{}:{}:1", 1001, base + 3));
    host.append(
        "passwd",
        &format!("eve:x:{}:{}::/home/eve:/bin/sh", base + 4, base + 5),
    );
    host.append("group", &format!("staff:x:{}:", base + 6));
    let d = host.daemon(base).await;
    let (_, uid) = install(&d, "alpha").await;
    assert_eq!(
        uid,
        base + 7,
        "subordinate uids and gids, users' uids and primary gids, and groups are skipped"
    );

    // A user added after install: the app's uid is now in someone's subordinate range.
    host.append("subuid", &format!("latecomer:{}:65536", base + 7));
    let err = d
        .admin(LaunchRequest {
            direct: true,
            ..LaunchRequest::new("alpha")
        })
        .await
        .unwrap_err();
    assert!(err.contains("latecomer"), "names the entry: {err}");
    assert!(
        err.contains(&host.file("subuid").display().to_string()),
        "names the file: {err}"
    );
    assert!(err.contains("app remove"), "names the fix: {err}");
    assert!(
        d.shared
            .supervisor
            .state(&d.shared.registry.find("alpha").unwrap().id)
            .is_none(),
        "nothing was launched"
    );
    d.stop().await;
}

/// (b) Two daemons on one host (two state directories) both gave their first app the same
/// uid. With one shared reservation directory they never do, and each reservation names
/// its daemon and app.
#[tokio::test]
async fn two_daemons_on_one_host_never_hand_out_the_same_uid() {
    if !is_root() {
        return;
    }
    let host = Host::new();
    let base = fresh_base();
    let a = host.daemon(base).await;
    let b = host.daemon(base).await;
    let mut seen = std::collections::HashMap::new();
    for n in 0..3 {
        for (label, d) in [("a", &a), ("b", &b)] {
            let (id, uid) = install(d, &format!("app{label}{n}")).await;
            if let Some(other) = seen.insert(uid, id.clone()) {
                panic!("uid {uid} given to {other} and {id}");
            }
            let holder =
                std::fs::read_to_string(host.reservations().join(uid.to_string())).unwrap();
            assert!(holder.contains(&id), "{holder}");
            assert!(
                holder.contains(&d.config.state_dir.display().to_string()),
                "{holder}"
            );
        }
    }
    assert_eq!(seen.len(), 6);
    let mode =
        std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(host.reservations()).unwrap());
    assert_eq!(mode & 0o777, 0o700, "root-only");

    // A restart keeps every app's uid and reservation.
    let before: Vec<_> = a.shared.registry.list().iter().map(|x| x.uid).collect();
    let config = a.config.clone();
    let dir = a.stop().await;
    let a = start_with(dir, config).await;
    let after: Vec<_> = a.shared.registry.list().iter().map(|x| x.uid).collect();
    assert_eq!(before, after);
    for uid in after {
        assert!(host.reservations().join(uid.to_string()).exists());
    }
    a.stop().await;
    b.stop().await;
}

/// Spawns `sleep 1000` as `uid`/`gid` (a process the app "left behind").
fn leftover(uid: u32) -> std::process::Child {
    std::process::Command::new("sleep")
        .arg("1000")
        .uid(uid)
        .gid(uid)
        .spawn()
        .unwrap()
}

fn wait_exit(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// (c) After `app remove`, a process the removed app left behind kept running, and the
/// next install got the same uid, so it read the new app's credentials. Now `app remove`
/// kills every process of the uid before releasing it; and a uid some process holds is
/// never handed out.
#[tokio::test]
async fn a_removed_apps_surviving_process_is_gone_before_its_uid_is_reused() {
    if !is_root() {
        return;
    }
    let host = Host::new();
    let base = fresh_base();
    let d = host.daemon(base).await;
    let (id, uid) = install(&d, "alpha").await;
    assert_eq!(uid, base + 1);
    let mut survivor = leftover(uid);
    d.admin(RemoveRequest {
        app: "alpha".into(),
    })
    .await
    .unwrap();
    let status = wait_exit(&mut survivor);
    if status.is_none() {
        let _ = survivor.kill();
        let _ = survivor.wait();
        panic!("the removed app's process still runs after `app remove`");
    }
    assert_eq!(status.unwrap().signal(), Some(libc::SIGKILL));
    let remove = d
        .audit_lines()
        .await
        .into_iter()
        .find(|l| l["event"] == "remove" && l["app_id"] == id.as_str())
        .unwrap_or_else(|| panic!("a remove event for {id}"));
    let detail = remove.to_string();
    assert!(detail.contains("released after killing 1"), "{detail}");
    assert!(!host.reservations().join(uid.to_string()).exists());

    // The uid is free again, and only now reused.
    let (_, reused) = install(&d, "beta").await;
    assert_eq!(reused, uid);

    // A process holding the next uid (no app has it): that uid is skipped.
    let mut squatter = leftover(base + 2);
    let (_, next) = install(&d, "gamma").await;
    let _ = squatter.kill();
    let _ = squatter.wait();
    assert_ne!(
        next,
        base + 2,
        "a uid with a live process is never handed out"
    );
    d.stop().await;
}
