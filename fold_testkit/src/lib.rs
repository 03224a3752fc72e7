//! Test support for the FoldClient workspace.
//!
//! Other crates use this crate as a dev-dependency in their integration tests. It provides:
//!
//! - engine detection: [`docker_available`], [`need_docker`] and [`connect_docker`] (which
//!   honours `DOCKER_HOST` and negotiates the API version with older engines);
//! - a local base image that needs no registry: [`ensure_base_image`] imports
//!   [`BASE_IMAGE`] from a minimal busybox-static rootfs built on the fly;
//! - static test binaries: [`build_static_binary`] builds a workspace binary with
//!   `+crt-static` into a separate target directory, so it runs in busybox, alpine or scratch
//!   images alike, and [`is_static_elf`] checks the result;
//! - [`probe::ProbeReport`], what the `fold_probe` binary of this crate reports from inside a
//!   container (uid, writable root, network interfaces, capabilities, `no_new_privs`, limits).
//!
//! Environment variables read:
//!
//! | variable | effect |
//! | --- | --- |
//! | `DOCKER_HOST` | engine address (default `unix:///var/run/docker.sock`) |
//! | `FOLD_REQUIRE_DOCKER=1` | the Docker tests must run: `scripts/test.sh` fails without an engine, and tests with other host needs fail instead of skipping |
//! | `FOLD_BUSYBOX` | path of a static busybox for the base image (default `/bin/busybox`, `/usr/bin/busybox`) |
//! | `FOLD_STATIC_TARGET_DIR` | target directory for static builds (default `<target>/static`) |
//! | `FOLD_STATIC_TARGET` | target triple for static builds (default `<arch>-unknown-linux-gnu`) |
//! | `FOLD_STATIC_BUILD_TIMEOUT_SECS` | deadline of one static build (default 1800) |

mod docker;
mod elf;
mod image;
pub mod probe;
mod python_image;
mod static_bin;
mod util;

pub use docker::{
    connect_docker, docker_available, docker_host, engine_is_podman, gvisor_available, need_docker,
    need_gvisor, need_podman, remove_container_if_exists, ENGINE_TIMEOUT, GVISOR_BROKEN_RUNTIME,
    GVISOR_RUNTIME, REQUIRE_DOCKER_ENV,
};
pub use elf::is_static_elf;
pub use image::{base_rootfs_tar, ensure_base_image, BASE_IMAGE, BASE_IMAGE_LABEL};
pub use python_image::{ensure_python_image, PYTHON_IMAGE};
pub use static_bin::{build_static_binary, static_target_triple, workspace_root};
