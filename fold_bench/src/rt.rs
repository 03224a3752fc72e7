//! The round-trip servers: the daemon (embedded node, the default deployment), the floor
//! stack, and the node's own socket, all in this process on one tokio runtime; and the
//! crypto bound.

use crate::worker::{AppKey, DaemonSetup, Setup};
use anyhow::{bail, Context as _, Result};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use fold_client::admin::protocol::{AppView, InstallRequest};
use fold_client::admin::{AdminCall, AdminClient};
use fold_client::config::{Config, FileConfig, Overrides};
use fold_client::daemon::{self, Shared};
use fold_client::proxy::NodeClient;
use fold_ipc::operation::Mutation;
use fold_ipc::server::{serve_connection, ConnectionLimits, Handler, ServerStats};
use fold_ipc::signing::{self, SignedFields};
use fold_ipc::{Credentials, ErrorCode, Operation, Request, Response, WireError};
use serde_json::json;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

/// How long admin calls may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The floor: framing, envelope decoding and `verify_strict` of each request against its
/// app's key, answered with the request's own params. No token, window, nonce, policy,
/// node or audit.
#[derive(Debug)]
pub struct FloorHandler {
    keys: HashMap<String, VerifyingKey>,
    stats: Arc<ServerStats>,
    verify_ns: AtomicU64,
}

impl Handler for FloorHandler {
    fn stats(&self) -> Option<Arc<ServerStats>> {
        Some(Arc::clone(&self.stats))
    }

    async fn handle(&self, mut request: Request) -> Response {
        let started = Instant::now();
        let verdict = match (
            request.app_id.as_deref().and_then(|id| self.keys.get(id)),
            SignedFields::of(&request),
            request.signature.as_deref(),
        ) {
            (Some(key), Ok(fields), Some(signature)) => signing::verify(key, &fields, signature)
                .map_err(|e| WireError::new(ErrorCode::BadSignature, e.to_string())),
            _ => Err(WireError::new(
                ErrorCode::BadSignature,
                "unsigned or unknown app",
            )),
        };
        self.verify_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match verdict {
            Ok(()) => {
                let echo = request
                    .params
                    .take()
                    .unwrap_or_else(|| RawValue::from_string("null".into()).unwrap_or_default());
                Response::ok_raw(std::mem::take(&mut request.request_id), echo)
            }
            Err(e) => Response::error(Some(request.request_id), e),
        }
    }
}

impl FloorHandler {
    /// Transport stage totals and the time spent verifying, ns.
    pub fn snapshot(&self) -> (fold_ipc::server::StatsSnapshot, u64) {
        (
            self.stats.snapshot(),
            self.verify_ns.load(Ordering::Relaxed),
        )
    }
}

/// Everything the round-trip measurements talk to.
#[derive(Debug)]
pub struct Servers {
    /// The daemon.
    pub shared: Arc<Shared>,
    /// The same daemon configured with batch verification off (`batch_signatures`).
    pub unbatched: Arc<Shared>,
    /// The floor server's handler (for its counters).
    pub floor: Arc<FloorHandler>,
    /// What the worker needs to reach them.
    pub setup: Setup,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

/// The daemon config the bench uses: the defaults, apps run as the daemon's uid.
pub fn daemon_config(state_dir: &Path, extra: &str) -> Result<Config> {
    let text = format!("uid_mode = \"daemon\"\n{extra}");
    let file = FileConfig::parse(&text, Path::new("fold_bench.toml"))?;
    let over = Overrides {
        state_dir: Some(state_dir.to_path_buf()),
        ..Overrides::default()
    };
    Ok(Config::build(file, over, nix::unistd::geteuid().as_raw())?)
}

/// Calls the daemon's admin socket; the result, or the daemon's error.
pub async fn admin_call<R: AdminCall>(socket: &Path, request: R) -> Result<R::Response> {
    AdminClient::new(socket, ADMIN_TIMEOUT)
        .call(request)
        .await
        .context("admin")
}

/// Installs app `name` with `grants` and the binary at `binary`; returns its credentials.
pub async fn install(
    socket: &Path,
    name: &str,
    binary: &Path,
    grants: &[&str],
    image: Option<&str>,
) -> Result<(AppView, Credentials)> {
    install_placed(socket, name, binary, grants, image, image.is_none()).await
}

/// [`install`], placed on the host (`direct`) or in a container whatever the image.
///
/// # Errors
///
/// The daemon refuses the install, or the credentials cannot be read.
pub async fn install_placed(
    socket: &Path,
    name: &str,
    binary: &Path,
    grants: &[&str],
    image: Option<&str>,
    direct: bool,
) -> Result<(AppView, Credentials)> {
    let mut install = InstallRequest::new(name, binary);
    install.grants = grants
        .iter()
        .map(|g| g.parse().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    install.image = image.map(str::to_string);
    install.direct = direct;
    let installed = admin_call(socket, install).await?;
    let creds = Credentials::load(&installed.app.credentials)?;
    Ok((installed.app, creds))
}

/// Starts the daemon (and a second one with batch verification off) with `apps` apps
/// each, seeds `records` records in each, and starts the floor server and the first
/// daemon's node's own socket.
///
/// # Errors
///
/// Any part fails to start.
pub async fn start(apps: usize, records: usize) -> Result<Servers> {
    let dir = tempfile::Builder::new().prefix("fb").tempdir_in("/tmp")?;
    let (shared, proxied) =
        start_daemon(&dir.path().join("state"), "", (apps, true), records).await?;
    let (unbatched, unbatched_setup) = start_daemon(
        &dir.path().join("unbatched"),
        "batch_signatures = false\n",
        (apps, false),
        records,
    )
    .await?;
    let mut keys = HashMap::new();
    for a in &proxied.apps {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(&a.seed_hex, &mut seed).context("bad seed")?;
        keys.insert(
            a.app_id.clone(),
            SigningKey::from_bytes(&seed).verifying_key(),
        );
    }

    let stop = CancellationToken::new();
    let floor = Arc::new(FloorHandler {
        keys,
        stats: Arc::default(),
        verify_ns: AtomicU64::new(0),
    });
    let grpc_socket = dir.path().join("grpc.sock");
    crate::grpc::serve(&grpc_socket)?;
    let floor_socket = dir.path().join("floor.sock");
    let listener = UnixListener::bind(&floor_socket)?;
    tokio::spawn(accept_loop(listener, Arc::clone(&floor), stop.clone()));

    let NodeClient::Embedded(node) = &*shared.node else {
        bail!("the bench daemon must embed its node");
    };
    let direct_socket = dir.path().join("node").join("node.sock");
    let listener = fold_node::bind_unix(&direct_socket).await?;
    tokio::spawn(fold_node::serve(
        fold_node::Listener::Unix(listener),
        node.clone(),
        ConnectionLimits::default(),
        stop.clone().cancelled_owned(),
    ));

    Ok(Servers {
        shared,
        floor,
        unbatched,
        setup: Setup {
            floor_socket,
            grpc_socket,
            direct_socket,
            proxied,
            unbatched: unbatched_setup,
        },
        stop,
        _dir: dir,
    })
}

impl Servers {
    /// Stops the daemon and the bench's servers.
    pub async fn stop(self) {
        self.stop.cancel();
        daemon::stop(&self.shared).await;
        daemon::stop(&self.unbatched).await;
    }
}

async fn accept_loop(listener: UnixListener, handler: Arc<FloorHandler>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        tokio::spawn(serve_connection(
            stream,
            Arc::clone(&handler),
            ConnectionLimits::default(),
            stop.clone().cancelled_owned(),
        ));
    }
}

/// Starts a daemon on `state_dir` with config lines `extra`, installs `apps` apps and
/// seeds `records` records.
async fn start_daemon(
    state_dir: &Path,
    extra: &str,
    (apps, sessions): (usize, bool),
    records: usize,
) -> Result<(Arc<Shared>, DaemonSetup)> {
    let config = daemon_config(state_dir, extra)?;
    let shared = daemon::start(config.clone()).await?;
    let mut setup = DaemonSetup {
        sockets: Vec::new(),
        apps: Vec::new(),
        ids: Vec::new(),
        session_sockets: Vec::new(),
        session_apps: Vec::new(),
    };
    // As many apps again with `--auth session`, the same grants, on the same node.
    for i in 0..apps * usize::from(sessions) {
        let (view, creds) = install(
            &config.admin_socket,
            &format!("session{i:02}"),
            Path::new("/bin/true"),
            &["query:item"],
            None,
        )
        .await?;
        admin_call(
            &config.admin_socket,
            fold_client::admin::protocol::AuthRequest {
                app: view.name.clone(),
                mode: fold_client::registry::AuthMode::Session,
            },
        )
        .await?;
        setup
            .session_sockets
            .push(shared.socket_path(&creds.app_id));
        setup.session_apps.push(AppKey {
            app_id: creds.app_id.clone(),
            token: creds.token.clone(),
            seed_hex: hex::encode(creds.signing_key.to_bytes()),
        });
    }
    for i in 0..apps {
        let (_, creds) = install(
            &config.admin_socket,
            &format!("bench{i:02}"),
            Path::new("/bin/true"),
            &["query:item"],
            None,
        )
        .await?;
        setup.sockets.push(shared.socket_path(&creds.app_id));
        setup.apps.push(AppKey {
            app_id: creds.app_id.clone(),
            token: creds.token.clone(),
            seed_hex: hex::encode(creds.signing_key.to_bytes()),
        });
    }
    setup.ids = seed(&shared, records).await?;
    Ok((shared, setup))
}

/// Creates schema `item` and `records` records through the node; returns their ids.
async fn seed(shared: &Shared, records: usize) -> Result<Vec<String>> {
    let timeout = Duration::from_secs(30);
    let limits = fold_client::app_limits::NodeLimits::default().for_request(timeout);
    let def = serde_json::from_value(json!({"name": "item", "fields": {
        "name": {"type": "string", "required": true},
        "cat": {"type": "string", "indexed": true},
        "n": {"type": "int"},
    }}))?;
    shared
        .node
        .call("bench", Operation::CreateSchema(def), timeout, &limits)
        .await
        .map_err(|e| anyhow::anyhow!("create schema: {e}"))?;
    let mut ids = Vec::with_capacity(records);
    for i in 0..records {
        let data =
            json!({"name": format!("item-{i:06}"), "cat": format!("c{:02}", i % 100), "n": i});
        let op = Operation::Mutation(Mutation::Create {
            schema: "item".into(),
            data: data.as_object().cloned().unwrap_or_default(),
        });
        let raw = shared
            .node
            .call("bench", op, timeout, &limits)
            .await
            .map_err(|e| anyhow::anyhow!("create: {e}"))?;
        let v: serde_json::Value = serde_json::from_str(raw.get())?;
        ids.push(v["id"].as_str().context("no id")?.to_string());
    }
    Ok(ids)
}

/// Single-core `verify_strict` rate (per second) over `duration`, on the canonical bytes of
/// a request like the ones measured.
pub fn verify_rate(duration: Duration) -> f64 {
    let (key, msg, sig) = sample_signature(0);
    let started = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..32 {
            let ok = key.verify_strict(&msg, &sig).is_ok();
            std::hint::black_box(ok);
        }
        n += 32;
        if started.elapsed() >= duration {
            break;
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Single-core batch verification rate (signatures per second, batches of 64).
pub fn batch_rate(duration: Duration) -> f64 {
    let samples: Vec<_> = (0..64).map(sample_signature).collect();
    let msgs: Vec<&[u8]> = samples.iter().map(|(_, m, _)| m.as_slice()).collect();
    let sigs: Vec<Signature> = samples.iter().map(|(_, _, s)| *s).collect();
    let keys: Vec<VerifyingKey> = samples.iter().map(|(k, _, _)| *k).collect();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < duration {
        let ok = ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok();
        std::hint::black_box(ok);
        n += 64;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn sample_signature(i: u64) -> (VerifyingKey, Vec<u8>, Signature) {
    let mut seed = [7u8; 32];
    seed[..8].copy_from_slice(&i.to_be_bytes());
    let key = SigningKey::from_bytes(&seed);
    let params = r#"{"schema":"item","filter":{"field":"id","op":"eq","value":"0190f3c2-6d1e-7b3a-9c4d-5e6f7a8b9c0d"},"limit":1}"#;
    let nonce = format!("{:032x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15);
    let fields = SignedFields {
        version: 1,
        app_id: "app_0123456789abcdef",
        request_id: "b123",
        timestamp: 1_700_000_000_000 + i,
        nonce: &nonce,
        operation: "query",
        params: params.as_bytes(),
    };
    let msg = signing::canonical_bytes(&fields);
    let sig = key.sign(&msg);
    (key.verifying_key(), msg, sig)
}
