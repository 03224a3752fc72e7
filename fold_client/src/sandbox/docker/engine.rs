//! Engine calls, each with a deadline, and the engine's answers turned into plain values
//! and errors that say what to do.

use super::super::SandboxError;
use super::spec::pull_reference;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, ContainerInspectResponse};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, KillContainerOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use std::future::Future;
use std::time::Duration;

/// Connects to the engine at `host` and negotiates the API version (bollard's default is
/// newer than Docker 20.10's API 1.41, which refuses newer versions outright).
///
/// # Errors
///
/// The engine is not reachable within `timeout`, with the fix.
pub async fn connect(host: &str, timeout: Duration) -> Result<Docker, SandboxError> {
    let unreachable = |why: String| {
        SandboxError::Backend(format!(
            "cannot reach the Docker engine at {host} ({why}): start it (`systemctl start docker` or \
             `dockerd`), point DOCKER_HOST at a running engine, or run the app in dev mode with \
             `--direct` (NOT sandboxed)"
        ))
    };
    let docker = Docker::connect_with_host(host).map_err(|e| unreachable(e.to_string()))?;
    let docker = tokio::time::timeout(timeout, docker.negotiate_version())
        .await
        .map_err(|_| unreachable(format!("no answer within {} s", timeout.as_secs())))?
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::time::timeout(timeout, docker.ping())
        .await
        .map_err(|_| unreachable(format!("no answer within {} s", timeout.as_secs())))?
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(docker)
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

/// Runs one engine request with a deadline; `what` names it in errors.
pub async fn call<T>(
    timeout: Duration,
    what: &str,
    request: impl Future<Output = Result<T, BollardError>>,
) -> Result<Result<T, BollardError>, SandboxError> {
    tokio::time::timeout(timeout, request).await.map_err(|_| {
        SandboxError::Backend(format!(
            "{what}: the Docker engine did not answer within {} s",
            timeout.as_secs()
        ))
    })
}

/// Runs one engine request with a deadline; engine errors become [`SandboxError::Backend`].
pub async fn call_ok<T>(
    timeout: Duration,
    what: &str,
    request: impl Future<Output = Result<T, BollardError>>,
) -> Result<T, SandboxError> {
    call(timeout, what, request)
        .await?
        .map_err(|e| SandboxError::Backend(format!("{what}: {}", message(&e))))
}

/// Inspects a container; `None` when it does not exist.
///
/// # Errors
///
/// Timeout or an engine error other than 404.
pub async fn inspect(
    docker: &Docker,
    timeout: Duration,
    id: &str,
) -> Result<Option<ContainerInspectResponse>, SandboxError> {
    let what = format!("inspecting container {id}");
    match call(timeout, &what, docker.inspect_container(id, None)).await? {
        Ok(c) => Ok(Some(c)),
        Err(e) if status(&e) == Some(404) => Ok(None),
        Err(e) => Err(SandboxError::Backend(format!("{what}: {}", message(&e)))),
    }
}

/// Force-removes a container. Gone already (404) or being removed (409) count as done.
///
/// # Errors
///
/// Timeout or another engine error.
pub async fn remove(docker: &Docker, timeout: Duration, id: &str) -> Result<(), SandboxError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    let what = format!("removing container {id}");
    match call(timeout, &what, docker.remove_container(id, Some(options))).await? {
        Ok(()) => Ok(()),
        Err(e) if matches!(status(&e), Some(404 | 409)) => Ok(()),
        Err(e) => Err(SandboxError::Backend(format!("{what}: {}", message(&e)))),
    }
}

/// Sends a signal to a container's init. Not running (409) or gone (404) count as done.
///
/// # Errors
///
/// Timeout or another engine error.
pub async fn kill(
    docker: &Docker,
    timeout: Duration,
    id: &str,
    signal: &str,
) -> Result<(), SandboxError> {
    let options = KillContainerOptionsBuilder::default()
        .signal(signal)
        .build();
    let what = format!("sending {signal} to container {id}");
    match call(timeout, &what, docker.kill_container(id, Some(options))).await? {
        Ok(()) => Ok(()),
        Err(e) if matches!(status(&e), Some(404 | 409)) => Ok(()),
        Err(e) => Err(SandboxError::Backend(format!("{what}: {}", message(&e)))),
    }
}

/// Creates a container; returns its id or the engine's error untouched (the caller decides
/// about storage-opt refusals).
///
/// # Errors
///
/// Timeout.
pub async fn create(
    docker: &Docker,
    timeout: Duration,
    name: &str,
    body: ContainerCreateBody,
) -> Result<Result<String, BollardError>, SandboxError> {
    let options = CreateContainerOptionsBuilder::default().name(name).build();
    let what = format!("creating container {name}");
    Ok(
        call(timeout, &what, docker.create_container(Some(options), body))
            .await?
            .map(|r| r.id),
    )
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
    docker: &Docker,
    timeout: Duration,
    image: &str,
) -> Result<bool, SandboxError> {
    let what = format!("inspecting image {image}");
    match call(timeout, &what, docker.inspect_image(image)).await? {
        Ok(_) => Ok(true),
        Err(e) if status(&e) == Some(404) => Ok(false),
        Err(e) => Err(SandboxError::Backend(format!("{what}: {}", message(&e)))),
    }
}

/// The error for an image that is missing and cannot be pulled.
pub fn image_unavailable(image: &str, reason: &str) -> SandboxError {
    SandboxError::Backend(format!(
        "image {image} is not available: the engine does not have it and pulling it failed ({reason}). \
         Provide it with `docker load -i FILE.tar` (or `docker pull {image}` where a registry is \
         reachable), or launch with `--image IMAGE` naming an image the engine has"
    ))
}

/// Makes sure `image` is present, pulling it if not; `progress` gets one line per pull
/// status update.
///
/// # Errors
///
/// The image is missing and cannot be pulled within `pull_timeout` (the error names the
/// image and how to provide it).
pub async fn ensure_image(
    docker: &Docker,
    timeout: Duration,
    pull_timeout: Duration,
    image: &str,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), SandboxError> {
    if image_present(docker, timeout, image).await? {
        return Ok(());
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
