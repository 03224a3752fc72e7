//! Engine calls, each with a deadline, and the engine's answers turned into plain values
//! and errors that say what to do.
//!
//! Every request goes through [`call`], which turns a connection failure (the engine is
//! down or restarting) into [`SandboxError::EngineUnreachable`], naming the engine's address
//! and the fix, rather than the HTTP client's "client error (Connect)".

use super::super::{PullPolicy, SandboxError};
use super::spec::pull_reference;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, ContainerInspectResponse, SystemInfo};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, KillContainerOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use std::future::Future;
use std::io::ErrorKind;
use std::time::Duration;

/// A connection to the engine that knows the engine's address, so that every error can
/// name it. Dereferences to the bollard client for requests.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    host: String,
}

impl Engine {
    /// The error for an engine that does not answer `what`, for `cause`.
    pub fn unreachable(&self, what: &str, cause: impl Into<String>) -> SandboxError {
        unreachable(&self.host, what, cause)
    }
}

impl std::ops::Deref for Engine {
    type Target = Docker;

    fn deref(&self) -> &Docker {
        &self.docker
    }
}

fn unreachable(host: &str, what: &str, cause: impl Into<String>) -> SandboxError {
    SandboxError::EngineUnreachable {
        host: host.to_string(),
        what: what.to_string(),
        cause: cause.into(),
    }
}

/// Connects to the engine at `host` and negotiates the API version (bollard's default is
/// newer than Docker 20.10's API 1.41, which refuses newer versions outright).
///
/// # Errors
///
/// [`SandboxError::EngineUnreachable`]: the engine is not reachable within `timeout`.
pub async fn connect(host: &str, timeout: Duration) -> Result<Engine, SandboxError> {
    let what = "connecting";
    let no_answer = |_| {
        unreachable(
            host,
            what,
            format!("no answer within {} s", timeout.as_secs()),
        )
    };
    let docker = Docker::connect_with_host(host).map_err(|e| unreachable(host, what, cause(&e)))?;
    let docker = tokio::time::timeout(timeout, docker.negotiate_version())
        .await
        .map_err(no_answer)?
        .map_err(|e| unreachable(host, what, cause(&e)))?;
    tokio::time::timeout(timeout, docker.ping())
        .await
        .map_err(no_answer)?
        .map_err(|e| unreachable(host, what, cause(&e)))?;
    Ok(Engine {
        docker,
        host: host.to_string(),
    })
}

/// Whether an error means the engine could not be reached at all (nothing listens on its
/// socket, the socket is gone, the connection dropped), as opposed to an answer from it.
pub fn is_connection_error(error: &BollardError) -> bool {
    let lost = |e: &std::io::Error| {
        matches!(
            e.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::NotConnected
                | ErrorKind::BrokenPipe
                | ErrorKind::NotFound
                | ErrorKind::UnexpectedEof
        )
    };
    match error {
        BollardError::HyperLegacyError { err } if err.is_connect() => true,
        BollardError::SocketNotFoundError(_) => true,
        // Transparent: its chain of sources starts below the I/O error itself.
        BollardError::IOError { err } => lost(err),
        // The engine is never asked for files or streams of ours, so an I/O error in the
        // chain is the connection's; an engine's answer is `DockerResponseServerError`.
        other => io_errors(other).any(lost),
    }
}

/// An error and its chain of sources, outermost first.
fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |&e| e.source())
}

/// The I/O errors in an error's chain of sources, itself included.
fn io_errors<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a std::io::Error> {
    chain(error).filter_map(|e| e.downcast_ref::<std::io::Error>())
}

/// The cause for a socket path with nothing at it (the engine is stopped and cleaned up,
/// or the address is wrong).
const NO_SOCKET: &str = "its socket does not exist";

/// What went wrong, for people: the innermost cause (e.g. "Connection refused (os error
/// 111)"), which says more than the HTTP client's wrapper ("client error (Connect)").
pub fn cause(error: &BollardError) -> String {
    let gone = |e: &std::io::Error| e.kind() == ErrorKind::NotFound;
    match error {
        BollardError::SocketNotFoundError(_) => NO_SOCKET.to_string(),
        BollardError::IOError { err } if gone(err) => NO_SOCKET.to_string(),
        _ if io_errors(error).any(gone) => NO_SOCKET.to_string(),
        _ => chain(error)
            .last()
            .map_or_else(|| error.to_string(), ToString::to_string),
    }
}

/// An engine error's HTTP status, if it has one.
pub fn status(error: &BollardError) -> Option<u16> {
    match error {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine's message for an error (without bollard's "Docker responded with" prefix).
pub fn message(error: &BollardError) -> String {
    match error {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Runs one engine request on `engine` with a deadline; `what` names it in errors. The
/// engine's own answers (errors included) are returned as they are, for the caller to judge.
///
/// # Errors
///
/// No answer within `timeout`, or [`SandboxError::EngineUnreachable`] when the engine
/// cannot be reached at all.
pub async fn call<T>(
    engine: &Engine,
    timeout: Duration,
    what: &str,
    request: impl Future<Output = Result<T, BollardError>>,
) -> Result<Result<T, BollardError>, SandboxError> {
    match tokio::time::timeout(timeout, request).await {
        Err(_) => Err(SandboxError::Backend(format!(
            "{what}: the Docker engine did not answer within {} s",
            timeout.as_secs()
        ))),
        Ok(Err(e)) if is_connection_error(&e) => Err(engine.unreachable(what, cause(&e))),
        Ok(answer) => Ok(answer),
    }
}

/// Runs one engine request with a deadline, as [`call`]; the engine's refusals become
/// [`SandboxError::Backend`].
///
/// # Errors
///
/// As [`call`], and the engine's refusal with its message.
pub async fn call_ok<T>(
    engine: &Engine,
    timeout: Duration,
    what: &str,
    request: impl Future<Output = Result<T, BollardError>>,
) -> Result<T, SandboxError> {
    call(engine, timeout, what, request)
        .await?
        .map_err(|e| refused(what, &e))
}

/// The engine's refusal of `what`, with its message.
fn refused(what: &str, error: &BollardError) -> SandboxError {
    SandboxError::Backend(format!("{what}: {}", message(error)))
}

/// Runs a request for which gone (404) and not running or already being removed (409) mean
/// there is nothing left to do, as [`call`].
async fn call_done_if_gone(
    engine: &Engine,
    timeout: Duration,
    what: &str,
    request: impl Future<Output = Result<(), BollardError>>,
) -> Result<(), SandboxError> {
    match call(engine, timeout, what, request).await? {
        Ok(()) => Ok(()),
        Err(e) if matches!(status(&e), Some(404 | 409)) => Ok(()),
        Err(e) => Err(refused(what, &e)),
    }
}

/// Inspects a container; `None` when it does not exist.
///
/// # Errors
///
/// Timeout or an engine error other than 404.
pub async fn inspect(
    docker: &Engine,
    timeout: Duration,
    id: &str,
) -> Result<Option<ContainerInspectResponse>, SandboxError> {
    let what = format!("inspecting container {id}");
    match call(docker, timeout, &what, docker.inspect_container(id, None)).await? {
        Ok(c) => Ok(Some(c)),
        Err(e) if status(&e) == Some(404) => Ok(None),
        Err(e) => Err(refused(&what, &e)),
    }
}

/// Force-removes a container. Gone already (404) or being removed (409) count as done.
///
/// # Errors
///
/// Timeout or another engine error.
pub async fn remove(docker: &Engine, timeout: Duration, id: &str) -> Result<(), SandboxError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    let what = format!("removing container {id}");
    call_done_if_gone(
        docker,
        timeout,
        &what,
        docker.remove_container(id, Some(options)),
    )
    .await
}

/// Sends a signal to a container's init. Not running (409) or gone (404) count as done.
///
/// # Errors
///
/// Timeout or another engine error.
pub async fn kill(
    docker: &Engine,
    timeout: Duration,
    id: &str,
    signal: &str,
) -> Result<(), SandboxError> {
    let options = KillContainerOptionsBuilder::default()
        .signal(signal)
        .build();
    let what = format!("sending {signal} to container {id}");
    call_done_if_gone(
        docker,
        timeout,
        &what,
        docker.kill_container(id, Some(options)),
    )
    .await
}

/// Creates a container; returns its id or the engine's error untouched (the caller decides
/// about storage-opt refusals).
///
/// # Errors
///
/// Timeout.
pub async fn create(
    docker: &Engine,
    timeout: Duration,
    name: &str,
    body: ContainerCreateBody,
) -> Result<Result<String, BollardError>, SandboxError> {
    let options = CreateContainerOptionsBuilder::default().name(name).build();
    let what = format!("creating container {name}");
    Ok(call(
        docker,
        timeout,
        &what,
        docker.create_container(Some(options), body),
    )
    .await?
    .map(|r| r.id))
}

/// Reads what the engine offers (its flavor and tiers); `gvisor_runtime` is the name
/// gVisor is expected under; `info` is the engine's `info` answer when the caller has it
/// already (it is asked for otherwise).
///
/// # Errors
///
/// The engine does not answer.
pub async fn offer(
    docker: &Engine,
    timeout: Duration,
    gvisor_runtime: &str,
    info: Option<&SystemInfo>,
) -> Result<super::Offer, SandboxError> {
    let version = call_ok(
        docker,
        timeout,
        "reading the engine version",
        docker.version(),
    )
    .await?;
    let fresh;
    let info = match info {
        Some(info) => info,
        None => {
            fresh = call_ok(docker, timeout, "reading engine info", docker.info()).await?;
            &fresh
        }
    };
    Ok(super::Offer::read(&version, info, gvisor_runtime))
}

/// Whether an engine refusal is about `storage_opt` (the engine cannot limit storage).
pub fn is_storage_refusal(error: &BollardError) -> bool {
    let m = message(error).to_ascii_lowercase();
    m.contains("storage-opt") || m.contains("storage opt") || m.contains("storageopt")
}

/// Whether the image is present in the engine.
///
/// # Errors
///
/// Timeout or an engine error other than 404.
pub async fn image_present(
    docker: &Engine,
    timeout: Duration,
    image: &str,
) -> Result<bool, SandboxError> {
    let what = format!("inspecting image {image}");
    match call(docker, timeout, &what, docker.inspect_image(image)).await? {
        Ok(_) => Ok(true),
        Err(e) if status(&e) == Some(404) => Ok(false),
        Err(e) => Err(refused(&what, &e)),
    }
}

/// The error for an image that is missing and cannot be pulled.
pub fn image_unavailable(image: &str, reason: &str) -> SandboxError {
    SandboxError::Backend(format!(
        "image {image} is not available: the engine does not have it, or a pull was asked for, and it could not be pulled ({reason}). \
         Provide it with `docker load -i FILE.tar` (or `docker pull {image}` where a registry is \
         reachable), or launch with `--image IMAGE` naming an image the engine has"
    ))
}

/// Makes sure `image` is present as `policy` says (pulled when missing, always, or
/// never); `progress` gets one line per pull status update.
///
/// # Errors
///
/// The image is missing and may not or cannot be pulled within `pull_timeout`, or a pull
/// that `always` asks for fails (the error names the image and how to provide it).
pub async fn ensure_image(
    docker: &Engine,
    timeout: Duration,
    pull_timeout: Duration,
    (image, policy): (&str, PullPolicy),
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), SandboxError> {
    if policy != PullPolicy::Always && image_present(docker, timeout, image).await? {
        return Ok(());
    }
    if policy == PullPolicy::Never {
        return Err(image_unavailable(
            image,
            "the pull policy is `never`, so it was not pulled",
        ));
    }
    let (from_image, tag) = pull_reference(image);
    let mut options = CreateImageOptionsBuilder::default().from_image(&from_image);
    if let Some(tag) = &tag {
        options = options.tag(tag);
    }
    progress(&format!("pulling image {image}"));
    let mut stream = docker.create_image(Some(options.build()), None, None);
    let pull = async {
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| message(&e))?;
            if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                return Err(detail);
            }
            let mut line = String::new();
            if let Some(id) = info.id {
                line.push_str(&id);
                line.push_str(": ");
            }
            line.push_str(info.status.as_deref().unwrap_or(""));
            if let Some(p) = info.progress_detail {
                if let (Some(cur), Some(total)) = (p.current, p.total) {
                    line.push_str(&format!(" {}/{} MB", cur >> 20, total >> 20));
                }
            }
            progress(&line);
        }
        Ok(())
    };
    match tokio::time::timeout(pull_timeout, pull).await {
        Err(_) => Err(image_unavailable(
            image,
            &format!("no result within {} s", pull_timeout.as_secs()),
        )),
        Ok(Err(reason)) => Err(image_unavailable(image, &reason)),
        Ok(Ok(())) if image_present(docker, timeout, image).await? => Ok(()),
        Ok(Ok(())) => Err(image_unavailable(
            image,
            "the pull ended but the engine does not list the image",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client for a Unix socket at `path` that nothing answers on any more: the socket
    /// file is left behind by a listener that is gone, as after an engine stops.
    fn engine_at_dead_socket(path: &std::path::Path) -> Engine {
        drop(std::os::unix::net::UnixListener::bind(path).unwrap());
        let host = format!("unix://{}", path.display());
        let docker = Docker::connect_with_unix(&host, 5, bollard::API_DEFAULT_VERSION).unwrap();
        Engine { docker, host }
    }

    fn assert_names_engine_and_fix(error: &SandboxError, host: &str, what: &str, cause: &str) {
        match error {
            SandboxError::EngineUnreachable {
                host: h,
                what: w,
                cause: c,
            } => {
                assert_eq!(h, host);
                assert_eq!(w, what);
                assert!(c.contains(cause), "cause {c:?}, expected {cause:?}");
            }
            other => panic!("not EngineUnreachable: {other:?}"),
        }
        let text = error.to_string();
        assert!(
            text.starts_with(&format!(
                "the Docker engine at {host} is not answering ({what}: "
            )),
            "{text}"
        );
        for fix in ["dockerd", "DOCKER_HOST", "--direct"] {
            assert!(text.contains(fix), "{text}");
        }
        assert!(!text.contains("hyper"), "{text}");
    }

    #[tokio::test]
    async fn requests_to_a_stopped_engine_name_its_address_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let engine = engine_at_dead_socket(&path);
        let host = engine.host.clone();
        let timeout = Duration::from_secs(5);
        // The first request of a launch, then the others a launch or a stop makes.
        let image = image_present(&engine, timeout, "foldclient/base:latest").await;
        assert_names_engine_and_fix(
            &image.unwrap_err(),
            &host,
            "inspecting image foldclient/base:latest",
            "refused",
        );
        let create = create(
            &engine,
            timeout,
            "fold_client_x",
            ContainerCreateBody::default(),
        );
        assert_names_engine_and_fix(
            &create.await.unwrap_err(),
            &host,
            "creating container fold_client_x",
            "refused",
        );
        let start = call(
            &engine,
            timeout,
            "starting the container",
            engine.start_container("x", None),
        );
        assert_names_engine_and_fix(
            &start.await.unwrap_err(),
            &host,
            "starting the container",
            "refused",
        );
        let kill = kill(&engine, timeout, "x", "SIGTERM").await;
        assert_names_engine_and_fix(
            &kill.unwrap_err(),
            &host,
            "sending SIGTERM to container x",
            "refused",
        );
        // The socket gone altogether (engine stopped and cleaned up).
        std::fs::remove_file(&path).unwrap();
        let inspect = inspect(&engine, timeout, "x").await;
        assert_names_engine_and_fix(
            &inspect.unwrap_err(),
            &host,
            "inspecting container x",
            NO_SOCKET,
        );
    }

    #[tokio::test]
    async fn connect_to_a_missing_engine_names_its_address_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let host = format!("unix://{}", dir.path().join("docker.sock").display());
        let error = connect(&host, Duration::from_secs(5)).await.unwrap_err();
        assert_names_engine_and_fix(&error, &host, "connecting", NO_SOCKET);
    }

    #[test]
    fn only_connection_failures_count_as_an_unreachable_engine() {
        let io = |kind: ErrorKind| BollardError::IOError {
            err: std::io::Error::from(kind),
        };
        assert!(is_connection_error(&io(ErrorKind::ConnectionRefused)));
        assert!(is_connection_error(&io(ErrorKind::ConnectionReset)));
        assert!(is_connection_error(&io(ErrorKind::NotFound)));
        assert!(is_connection_error(&BollardError::SocketNotFoundError(
            "/var/run/docker.sock".into()
        )));
        // Answers from the engine are the engine's own errors, with their status.
        assert!(!is_connection_error(
            &BollardError::DockerResponseServerError {
                status_code: 404,
                message: "no such image".into(),
            }
        ));
        assert!(!is_connection_error(
            &BollardError::DockerResponseServerError {
                status_code: 500,
                message: "connection refused by the registry".into(),
            }
        ));
        assert!(!is_connection_error(&io(ErrorKind::PermissionDenied)));
        assert!(!is_connection_error(&BollardError::RequestTimeoutError));
    }
}
