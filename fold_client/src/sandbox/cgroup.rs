//! Which container a process is in, from its `/proc/<pid>/cgroup` text.

/// Whether a `/proc/<pid>/cgroup` text places the process in the container with this full
/// id: some hierarchy's path ends in a component that is the id itself (cgroup v1 and the
/// cgroupfs driver: `/docker/<id>`) or its systemd scope (`docker-<id>.scope`,
/// `libpod-<id>.scope`), or Podman's cgroupfs name (`/libpod_parent/libpod-<id>`). Whole
/// components only, never a substring.
pub fn names(cgroup: &str, container_id: &str) -> bool {
    container_id.len() >= 12
        && cgroup
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .filter_map(|path| path.rsplit('/').next())
            .any(|last| {
                last == container_id
                    || last.strip_prefix("libpod-") == Some(container_id)
                    || ["docker-", "libpod-"].iter().any(|prefix| {
                        last.strip_prefix(prefix)
                            .and_then(|rest| rest.strip_suffix(".scope"))
                            == Some(container_id)
                    })
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f0c9a9b1d2e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a";

    #[test]
    fn cgroup_paths_name_their_container_exactly() {
        let v1 = format!("12:memory:/docker/{ID}\n11:pids:/docker/{ID}\n");
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert!(names(&v1, ID));
        assert!(names(&v2, ID));
        let podman = format!("12:memory:/libpod_parent/libpod-{ID}\n");
        assert!(names(&podman, ID));
        assert!(!names(
            "12:memory:/user.slice\n0::/user.slice/session-1.scope\n",
            ID
        ));
        assert!(!names(&v1, ""), "an empty id matches nothing");
        // A cgroup a local user made, whose name merely contains the id, is not the container.
        let lookalike = format!("0::/user.slice/evil-{ID}\n12:memory:/docker/{ID}/child\n");
        assert!(!names(&lookalike, ID));
        assert!(!names(&v1, &ID[..12]), "a prefix is not the id");
    }
}
