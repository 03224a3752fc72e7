//! The Prometheus endpoint (`metrics_listen`), scraped over its Unix socket by a real HTTP
//! request and parsed with a Prometheus text-format parser (`prometheus-parse`): request
//! counts by app, operation and verdict, a latency histogram whose count matches them, the
//! stage times, the storage quota; an operation name an app made up counts as `other`
//! rather than becoming a label value of its own. Off by default.

use crate::support::{config_in, start_with};
use fold_ipc::Operation;
use prometheus_parse::{Scrape, Value};
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(socket: &Path) -> Scrape {
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: application/openmetrics-text"));
    if std::env::var_os("SHOW_METRICS").is_some() {
        eprintln!("{body}");
    }
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test]
async fn the_endpoint_counts_each_apps_requests_and_parses_as_prometheus_text() {
    let dir = tempfile::Builder::new()
        .prefix("fcm")
        .tempdir_in("/tmp")
        .unwrap();
    let socket = dir.path().join("metrics.sock");
    let extra = format!(
        "metrics_listen = \"unix:{}\"\n[app_limits]\nmax_bytes = 1048576\n",
        socket.display()
    );
    let config = config_in(dir.path(), &extra);
    let d = start_with(dir, config).await;
    let app = d.install("counted", &["query:post"], None).await;
    let conn = d.connect(&app).await;
    for _ in 0..3 {
        assert!(conn.call(&Operation::Ping).await.success);
    }
    let create = Operation::CreateSchema(
        serde_json::from_value(
            serde_json::json!({"name": "post", "fields": {"t": {"type": "string"}}}),
        )
        .unwrap(),
    );
    assert!(!conn.call(&create).await.success, "not granted");
    let mut made_up = conn.signed(&Operation::Ping);
    made_up.operation = "made_up_operation".into();
    // Re-signed with its new name: refused as an unknown operation, after authentication.
    made_up.nonce = Some("f".repeat(32));
    fold_ipc::signing::sign_request(&mut made_up, &app.signing_key).unwrap();
    assert!(!conn.send(&made_up).await.success);

    let s = scrape(&socket).await;
    let app_label = ("app", "counted");
    assert_eq!(
        value(
            &s,
            "foldclient_requests_total",
            &[app_label, ("operation", "ping"), ("verdict", "allow")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &s,
            "foldclient_requests_total",
            &[
                app_label,
                ("operation", "create_schema"),
                ("verdict", "deny")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "foldclient_requests_total",
            &[app_label, ("operation", "other"), ("verdict", "deny")]
        ),
        Some(1.0)
    );
    assert!(
        !s.samples
            .iter()
            .any(|x| x.labels.get("operation") == Some("made_up_operation")),
        "an app cannot add label values"
    );
    let histogram = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "foldclient_request_duration_seconds"
                && x.labels.get("app") == Some("counted")
        })
        .expect("a latency histogram per app");
    let Value::Histogram(buckets) = &histogram.value else {
        panic!("not a histogram: {histogram:?}")
    };
    assert_eq!(
        buckets.last().unwrap().count,
        5.0,
        "one observation per request"
    );
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "cumulative"
    );
    assert_eq!(
        value(&s, "foldclient_storage_quota_bytes", &[app_label]),
        Some(1_048_576.0)
    );
    assert!(value(&s, "foldclient_storage_bytes", &[app_label]).is_some());
    assert!(value(&s, "foldclient_stage_seconds_total", &[("stage", "node")]).unwrap() > 0.0);
    d.stop().await;
}

#[test]
fn only_unix_sockets_and_loopback_ports_are_accepted() {
    use fold_client::config::MetricsListen;
    assert!(matches!(
        MetricsListen::parse("unix:/run/m.sock"),
        Ok(MetricsListen::Unix(_))
    ));
    assert!(matches!(
        MetricsListen::parse("127.0.0.1:9464"),
        Ok(MetricsListen::Tcp(_))
    ));
    assert!(matches!(
        MetricsListen::parse("[::1]:9464"),
        Ok(MetricsListen::Tcp(_))
    ));
    for bad in [
        "0.0.0.0:9464",
        "10.1.2.3:9464",
        "unix:relative.sock",
        "localhost:9464",
    ] {
        assert!(MetricsListen::parse(bad).is_err(), "{bad}");
    }
}
