//! Operator conveniences: shell completions and the manual page come from the clap
//! definitions (so they cannot drift from the commands), and the systemd unit in
//! `packaging/` is valid for systemd and as hardened as its options claim.

use std::process::Command;

fn fold_client(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fold_client"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn completions_and_the_manual_page_name_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = fold_client(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for word in ["fold_client", "serve", "install", "warm", "auth", "doctor"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = fold_client(&["completions", "tcsh"]);
    assert!(!out.status.success(), "an unknown shell is refused");
    let man = fold_client(&["man"]);
    assert!(man.status.success());
    let page = String::from_utf8(man.stdout).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH fold_client"),
        "{}",
        &page[..200.min(page.len())]
    );
    for word in ["serve", "completions", "state\\-dir"] {
        assert!(page.contains(word), "the manual page lacks {word}");
    }
}

/// `systemd-analyze verify` accepts the unit (with `ExecStart` pointing at this build),
/// its command line is one the CLI takes, and `systemd-analyze security` rates its exposure
/// at most 4.0 ("OK").
#[test]
fn the_systemd_unit_is_valid_and_hardened() {
    let unit = std::fs::read_to_string(
        fold_testkit::workspace_root().join("packaging/fold_client.service"),
    )
    .unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/fold_client"));
    let mut args: Vec<&str> = words.collect();
    args.push("--help");
    let out = fold_client(&args);
    assert!(out.status.success(), "ExecStart's arguments parse: {out:?}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fold_client.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/fold_client",
            env!("CARGO_BIN_EXE_fold_client"),
        ),
    )
    .unwrap();
    let analyze = |args: &[&str]| {
        Command::new("systemd-analyze")
            .args(args)
            .arg(&path)
            .output()
            .expect("systemd-analyze (apt-get install systemd) checks the unit")
    };
    let verify = analyze(&["verify"]);
    assert!(verify.status.success(), "{verify:?}");
    let security = analyze(&["security", "--offline=yes"]);
    let text = String::from_utf8_lossy(&security.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for fold_client.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    assert!(level <= 4.0, "exposure {level}: {text}");
}
