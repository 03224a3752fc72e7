//! Who is on the other end of an app's socket, and whether it is a process of the app's
//! running container.
//!
//! The kernel names the peer at `connect` time: `SO_PEERCRED` gives its uid and pid, and
//! `SO_PEERPIDFD` (Linux 6.5+) a pidfd of that very process. A pid alone can be reused
//! once its process exits; the pidfd cannot, so every fact read from `/proc/<pid>` is
//! trusted only if the pidfd still says the process is alive after the read.
//!
//! A container's identity is read from its init process (the host pid the engine reports):
//! the exact text of its `/proc/<pid>/cgroup`, which must name the container, and its pid
//! namespace. Nothing is matched by substring. Who may connect depends on the tier:
//!
//! - `container` (runc): the app's processes are host processes. A peer belongs to the
//!   container when it has the app's uid, its cgroup text is identical and its pid
//!   namespace is the same one.
//! - `gvisor`: the app's processes live inside gVisor's user-space kernel and never touch a
//!   host socket themselves; with `--host-uds=open` the sandbox's gofer (`runsc-gofer`, a
//!   host process running as root, started by the same containerd shim as the sandbox)
//!   opens the connection for them. So the peer must be uid 0, in the container's cgroup
//!   (identical text) and a child of the parent of the pid the engine reports (the
//!   `runsc-sandbox` process). Processes in that cgroup are made by the runtime only:
//!   nobody but root can move a process into it, and the app cannot create host processes.
//!   See docs/security.md, "Isolation tiers".

use crate::sandbox::cgroup_names;
use crate::sandbox::Isolation;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// The process that connected.
#[derive(Debug)]
pub struct Peer {
    /// Its uid (host view).
    pub uid: u32,
    /// Its host pid.
    pub pid: i32,
    /// A pidfd of it, where the kernel gives one (`SO_PEERPIDFD`).
    pidfd: Option<OwnedFd>,
}

/// What a container's processes share, read from its init process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerIdentity {
    /// The container's id (full).
    pub id: String,
    /// The exact `/proc/<init>/cgroup` text.
    cgroup: String,
    /// The init's pid namespace (device, inode of `/proc/<init>/ns/pid`).
    pid_ns: (u64, u64),
    /// The tier the container runs under.
    isolation: Isolation,
    /// The init's host pid.
    init_pid: i32,
    /// The init's parent's host pid, the engine's shim (gVisor only; 0 under runc, where
    /// the pid namespace identifies the container's processes instead).
    parent: i32,
}

impl Peer {
    /// Identifies the peer of a connected Unix stream.
    ///
    /// # Errors
    ///
    /// A message for the audit when the kernel gives no credentials, or the pidfd names
    /// another process than `SO_PEERCRED` (or one that is gone).
    pub fn of(stream: &impl AsFd) -> Result<Peer, String> {
        let cred = getsockopt(stream, sockopt::PeerCredentials)
            .map_err(|e| format!("no peer credentials: {e}"))?;
        // ENOPROTOOPT on kernels before 6.5: the pid check then stands alone.
        let pidfd = getsockopt(stream, sockopt::PeerPidfd).ok();
        if let Some(fd) = &pidfd {
            let pid = pidfd_pid(fd).ok_or("the peer process is gone")?;
            if pid != cred.pid() {
                return Err(format!(
                    "peer pidfd names pid {pid}, SO_PEERCRED pid {}",
                    cred.pid()
                ));
            }
        }
        Ok(Peer {
            uid: cred.uid(),
            pid: cred.pid(),
            pidfd,
        })
    }

    /// Whether the peer process has not exited (true without a pidfd: nothing to ask).
    fn alive(&self) -> bool {
        let Some(fd) = &self.pidfd else { return true };
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        // A pidfd becomes readable when its process exits.
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    /// Checks that the peer is what connects for the container `want` of an app running as
    /// `app_uid`: one of its processes (runc), or its gVisor gofer.
    ///
    /// # Errors
    ///
    /// Why not, for the audit.
    pub fn check_in(&self, want: &ContainerIdentity, app_uid: u32) -> Result<(), String> {
        let short = short(&want.id);
        let (cgroup, pid_ns) = read_identity(self.pid)
            .map_err(|e| format!("cannot read peer pid {}: {e}", self.pid))?;
        // Only a gVisor gofer is known by its parent; read before the liveness proof.
        let parent = match want.isolation {
            Isolation::Container => None,
            Isolation::Gvisor => parent_of(self.pid),
        };
        if !self.alive() {
            return Err(format!("peer pid {} exited during the check", self.pid));
        }
        let expected_uid = match want.isolation {
            Isolation::Container => app_uid,
            Isolation::Gvisor => 0,
        };
        if self.uid != expected_uid {
            return Err(format!(
                "peer uid {} is not uid {expected_uid}, which connects for the app's {} container {short}",
                self.uid, want.isolation
            ));
        }
        if cgroup != want.cgroup {
            return Err(format!(
                "peer pid {} is not in the app's container {short} (other cgroups)",
                self.pid
            ));
        }
        match want.isolation {
            Isolation::Container if pid_ns != want.pid_ns => Err(format!(
                "peer pid {} is not in the app's container {short} (other pid namespace)",
                self.pid
            )),
            Isolation::Gvisor if parent != Some(want.parent) || self.pid == want.init_pid => {
                Err(format!(
                    "peer pid {} is not the gVisor gofer of the app's container {short} \
                     (parent {parent:?}, the sandbox's is {})",
                    self.pid, want.parent
                ))
            }
            _ => Ok(()),
        }
    }
}

impl ContainerIdentity {
    /// Reads the identity of container `id` from its init process `init_pid` (host pid),
    /// checking that the process's cgroup names the container exactly.
    ///
    /// # Errors
    ///
    /// The process is gone or is not in that container.
    pub fn of_init(
        id: &str,
        init_pid: u32,
        isolation: Isolation,
    ) -> Result<ContainerIdentity, String> {
        let pid = i32::try_from(init_pid).unwrap_or(-1);
        let (cgroup, pid_ns) = read_identity(pid)
            .map_err(|e| format!("cannot read the container's init pid {init_pid}: {e}"))?;
        let gone = || format!("pid {init_pid} is no longer in container {}", short(id));
        if !cgroup_names(&cgroup, id) {
            return Err(gone());
        }
        // The sandbox's parent is its shim, which started the gofer. Read the parent, then
        // the cgroup again: still in the container, so the parent read is the sandbox's.
        let parent = match isolation {
            Isolation::Container => 0,
            Isolation::Gvisor => {
                let parent =
                    parent_of(pid).ok_or_else(|| format!("pid {init_pid} has no parent"))?;
                if !read_identity(pid).is_ok_and(|(again, _)| again == cgroup) {
                    return Err(gone());
                }
                parent
            }
        };
        Ok(ContainerIdentity {
            id: id.to_string(),
            cgroup,
            pid_ns,
            isolation,
            init_pid: pid,
            parent,
        })
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn read_identity(pid: i32) -> std::io::Result<(String, (u64, u64))> {
    if pid <= 0 {
        return Err(std::io::Error::other("no pid"));
    }
    let cgroup = crate::fsutil::read_capped(
        std::path::Path::new(&format!("/proc/{pid}/cgroup")),
        64 * 1024,
    )?;
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/pid"))?;
    Ok((cgroup, (ns.dev(), ns.ino())))
}

/// The parent pid of `pid` (field 4 of `/proc/<pid>/stat`, after the parenthesised name,
/// which may itself hold spaces and parentheses).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The pid a pidfd refers to (`Pid:` in its fdinfo; -1 once the process is gone).
fn pidfd_pid(fd: &OwnedFd) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|pid| *pid > 0)
}

/// Which processes of a container-placed app may connect, besides the uid check: what the
/// supervisor last published about the app's container (each change of its state is
/// published). The listener reads it; it never asks the supervisor. A host-placed app (dev
/// mode) admits any process of its uid, whatever this says: the registry's placement
/// decides which applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PeerRule {
    /// Nobody: no container of the app is running.
    #[default]
    Nobody,
    /// The container is starting; its init pid is not known yet.
    Starting,
    /// Only processes of this running container (same cgroups and pid namespace as its
    /// init process, host pid `init_pid`), or its gVisor gofer (see the module's doc).
    Container {
        /// The container's full id.
        id: String,
        /// Its init process's host pid (for gVisor: the `runsc-sandbox` process).
        init_pid: u32,
        /// The tier it runs under, which decides who connects for it.
        isolation: Isolation,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f0c9a9b1d2e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a";

    #[test]
    fn a_process_outside_the_container_is_refused() {
        // This test process against a made-up container identity: cgroups differ.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = Peer::of(&a).unwrap();
        assert_eq!(peer.pid, i32::try_from(std::process::id()).unwrap());
        assert!(peer.alive());
        let (cgroup, pid_ns) = read_identity(peer.pid).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let same = ContainerIdentity {
            id: ID.into(),
            cgroup,
            pid_ns,
            isolation: Isolation::Container,
            init_pid: 1,
            parent: 0,
        };
        assert_eq!(peer.check_in(&same, me), Ok(()));
        let err = peer.check_in(&same, me + 1).unwrap_err();
        assert!(err.contains("uid"), "{err}");
        let other_cgroup = ContainerIdentity {
            cgroup: format!("12:memory:/docker/{ID}\n"),
            ..same.clone()
        };
        assert!(peer.check_in(&other_cgroup, me).is_err());
        let other_ns = ContainerIdentity {
            pid_ns: (pid_ns.0, pid_ns.1 + 1),
            ..same.clone()
        };
        assert!(peer.check_in(&other_ns, me).is_err());
        assert!(ContainerIdentity::of_init(ID, std::process::id(), Isolation::Container).is_err());
        // As a gVisor gofer: only root connects for the sandbox, and only a child of the
        // sandbox's parent; this test process's parent is not the made-up shim (pid 0).
        let gofer = ContainerIdentity {
            isolation: Isolation::Gvisor,
            ..same
        };
        let err = peer.check_in(&gofer, me).unwrap_err();
        if me == 0 {
            assert!(err.contains("not the gVisor gofer"), "{err}");
        } else {
            assert!(err.contains("uid"), "{err}");
        }
        let parent = parent_of(peer.pid).unwrap();
        let gofer_here = ContainerIdentity { parent, ..gofer };
        assert_eq!(peer.check_in(&gofer_here, me).is_ok(), me == 0);
    }

    #[test]
    fn a_peer_that_exited_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])")
            .arg(&path)
            .spawn()
            .unwrap();
        let (stream, _) = listener.accept().unwrap();
        child.wait().unwrap();
        match Peer::of(&stream) {
            // The kernel already reports the pidfd's process as gone.
            Err(e) => assert!(e.contains("gone"), "{e}"),
            Ok(peer) => {
                let (cgroup, pid_ns) =
                    read_identity(i32::try_from(std::process::id()).unwrap()).unwrap();
                let want = ContainerIdentity {
                    id: ID.into(),
                    cgroup,
                    pid_ns,
                    isolation: Isolation::Container,
                    init_pid: 1,
                    parent: 0,
                };
                assert!(peer.check_in(&want, peer.uid).is_err(), "{peer:?}");
            }
        }
    }
}
