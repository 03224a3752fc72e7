//! The opt-in Prometheus endpoint (`metrics_listen`, off by default): `GET /metrics` on a
//! Unix socket or a loopback port, in the OpenMetrics text format (prometheus-client),
//! served with hyper. Everything is read when scraped: each app's request counts by
//! operation and verdict and its latency histogram (`app_metrics`), the request path's
//! stage times, each app's storage against its quota (asked of the node, briefly), and
//! containers by state. Names are documented in `docs/operations.md`, "Metrics".

use crate::app_metrics::CountsSnapshot;
use crate::apps::Shared;
use crate::config::MetricsListen;
use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// How long a scrape waits for the node's count of one app's storage.
const USAGE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long one scrape connection may stay open.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

type Labels = Vec<(String, String)>;

/// One app's latency histogram, as counted (a snapshot, not a live metric).
#[derive(Debug)]
struct LatencyHistogram(CountsSnapshot);

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        encoder.encode_histogram::<NoLabelSet>(s.sum_seconds, s.count, &s.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The metrics text, as of now.
pub async fn render(shared: &Shared) -> String {
    let mut registry = Registry::with_prefix("foldclient");
    let requests = Family::<Labels, Counter>::default();
    let storage = Family::<Labels, Gauge>::default();
    let quota = Family::<Labels, Gauge>::default();
    let apps = shared.registry.list();
    let runtimes: Vec<_> = {
        let runtimes = crate::apps::lock(&shared.runtimes);
        apps.iter()
            .map(|a| (Arc::clone(a), runtimes.get(&a.id).cloned()))
            .collect()
    };
    for (app, runtime) in runtimes {
        let Some(runtime) = runtime else { continue };
        let counts = runtime.requests.snapshot();
        for (operation, verdict, n) in &counts.requests {
            let labels = vec![
                ("app".to_string(), app.name.clone()),
                ("operation".to_string(), (*operation).to_string()),
                ("verdict".to_string(), (*verdict).to_string()),
            ];
            requests.get_or_create(&labels).inc_by(*n);
        }
        registry
            .sub_registry_with_label(("app".into(), app.name.clone().into()))
            .register(
                "request_duration_seconds",
                "Time from a request's arrival to its answer",
                LatencyHistogram(counts),
            );
        let limits = app.node_limits.resolve(&shared.config.default_node_limits);
        let label = vec![("app".to_string(), app.name.clone())];
        if let Ok(usage) = shared.node.usage(&app.id, USAGE_TIMEOUT).await {
            storage
                .get_or_create(&label)
                .set(i64::try_from(usage.bytes).unwrap_or(i64::MAX));
        }
        if let Some(max) = limits.quota.max_bytes {
            quota
                .get_or_create(&label)
                .set(i64::try_from(max).unwrap_or(i64::MAX));
        }
    }
    registry.register(
        "requests",
        "Requests answered, by app, operation and verdict",
        requests,
    );
    registry.register(
        "storage_bytes",
        "Bytes of record data an app holds on the node",
        storage,
    );
    registry.register(
        "storage_quota_bytes",
        "An app's storage quota, when it has one",
        quota,
    );
    let stages = Family::<Labels, Counter<f64>>::default();
    let snapshot = shared.metrics.snapshot();
    for (stage, ns) in [
        ("auth", snapshot.auth_ns),
        ("policy", snapshot.policy_ns),
        ("node", snapshot.node_ns),
        ("audit", snapshot.audit_ns),
    ] {
        let labels = vec![("stage".to_string(), stage.to_string())];
        stages.get_or_create(&labels).inc_by(ns as f64 / 1e9);
    }
    registry.register(
        "stage_seconds",
        "Time the request path spent in each stage, all apps (node: reads and writes)",
        stages,
    );
    let containers = Family::<Labels, Gauge>::default();
    for app in &apps {
        if let Some(status) = shared.supervisor.status(&app.id) {
            let state = status.state.to_string();
            // `exited(3)` and `failed: why` count under their kind.
            let kind = state
                .split(['(', ':'])
                .next()
                .unwrap_or("unknown")
                .to_string();
            let labels = vec![
                ("sandbox".to_string(), status.kind.as_str().to_string()),
                ("state".to_string(), kind),
            ];
            containers.get_or_create(&labels).inc();
        }
        if let Some(pool) = shared.supervisor.warm(&app.id) {
            let labels = vec![
                ("sandbox".to_string(), "docker".to_string()),
                ("state".to_string(), "warm".to_string()),
            ];
            containers
                .get_or_create(&labels)
                .inc_by(i64::try_from(pool.ready).unwrap_or(0));
        }
    }
    registry.register(
        "runs",
        "Apps' runs by backend and state; prepared containers as `warm`",
        containers,
    );
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::error!("cannot encode the metrics: {e}");
    }
    text
}

async fn respond(
    shared: &Shared,
    request: &hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (200, render(shared).await),
        (&hyper::Method::GET, _) => (404, "not found: try /metrics\n".to_string()),
        _ => (405, "only GET\n".to_string()),
    };
    hyper::Response::builder()
        .status(status)
        .header(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

async fn serve_connection<S>(stream: S, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, std::convert::Infallible>(respond(&shared, &request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
}

/// Serves each connection `accept` yields, until shutdown.
async fn accept_loop<S, P, A, F>(shared: &Arc<Shared>, mut accept: F)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> A,
    A: std::future::Future<Output = std::io::Result<(S, P)>>,
{
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = accept() => accepted,
        };
        if let Ok((stream, _)) = accepted {
            shared
                .tasks
                .spawn(serve_connection(stream, Arc::clone(shared)));
        }
    }
}

/// Binds the endpoint the config names (if any) and serves it until shutdown.
///
/// # Errors
///
/// The socket or port cannot be bound.
pub fn spawn(shared: &Arc<Shared>) -> std::io::Result<()> {
    let Some(listen) = shared.config.metrics_listen.clone() else {
        return Ok(());
    };
    match listen {
        MetricsListen::Unix(path) => {
            // As the admin socket: bound where only the daemon writes, 0600 on its entry.
            let (Some(dir), Some(name)) =
                (path.parent(), path.file_name().and_then(|n| n.to_str()))
            else {
                return Err(std::io::Error::other(
                    "the metrics socket path has no file name",
                ));
            };
            let dir = crate::fsutil::Dir::open(dir)?;
            let socket = crate::ipc::bind_socket(&dir, name, crate::fsutil::Access::private(0o600))
                .map_err(std::io::Error::other)?;
            let owned = Arc::clone(shared);
            shared.tasks.spawn(async move {
                accept_loop(&owned, || socket.listener.accept()).await;
                let _ = std::fs::remove_file(&socket.path);
            });
        }
        MetricsListen::Tcp(addr) => {
            let std_listener = std::net::TcpListener::bind(addr)?;
            std_listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(std_listener)?;
            let owned = Arc::clone(shared);
            shared
                .tasks
                .spawn(async move { accept_loop(&owned, || listener.accept()).await });
        }
    }
    tracing::info!("metrics endpoint listening");
    Ok(())
}
