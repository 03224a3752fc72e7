//! `test_app`: the app the sandbox tests launch, in a container or in direct mode.
//!
//! It reads `FOLD_CLIENT_*` from its environment (through `fold_ipc::client::Client`),
//! like any app. Its arguments are steps, run left to right; each prints one JSON line:
//!
//! | step | does |
//! | --- | --- |
//! | `query` (default) | ping, create schema `post` if missing, create a record, query |
//! | `probe` | uid, gid, network interfaces, CapEff, NoNewPrivs, whether `/` and `/tmp` are writable |
//! | `env` | the names of the `FOLD_CLIENT_*` variables it was given |
//! | `serve MS` | forever: ping and query every MS ms, reconnecting as needed |
//! | `sleep SECS` | sleep (fractions allowed) |
//! | `ignore-term` | from now on, swallow SIGTERM |
//! | `exit CODE` | exit with CODE at once |
//! | `hog` | allocate and touch memory until killed |
//!
//! Exits 0 when every step succeeded, 1 otherwise.

use fold_ipc::client::{Client, Error};
use fold_ipc::query::Query;
use fold_ipc::schema::SchemaDef;
use serde_json::{json, Value};
use std::time::Duration;

type Failure = Box<dyn std::error::Error>;

fn emit(value: &Value) {
    println!("{value}");
}

async fn client(cached: &mut Option<Client>) -> Result<Client, Error> {
    if let Some(c) = cached {
        return Ok(c.clone());
    }
    let c = Client::from_env().await?;
    *cached = Some(c.clone());
    Ok(c)
}

fn post_schema() -> Result<SchemaDef, Failure> {
    Ok(serde_json::from_value(json!({
        "name": "post",
        "fields": {
            "title": {"type": "string", "required": true},
            "author": {"type": "string", "indexed": true}
        }
    }))?)
}

async fn query_step(client: &Client) -> Result<Value, Failure> {
    let pong = client.ping().await?;
    if !client.list_schemas().await?.iter().any(|s| s == "post") {
        match client.create_schema(post_schema()?).await {
            Ok(_) | Err(Error::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let sandbox = std::env::var("FOLD_CLIENT_SANDBOX").unwrap_or_default();
    let created = client
        .create(
            "post",
            json!({"title": format!("hello from {sandbox}"), "author": client.app_id()}),
        )
        .await?;
    let page = client.query(Query::new("post").limit(100)).await?;
    Ok(json!({
        "step": "query",
        "ok": true,
        "pong": serde_json::to_value(&pong)?,
        "created": created.id,
        "rows": page.rows.len(),
        "sandbox": sandbox,
    }))
}

/// The capability masks and flags of `/proc/self/status`.
fn status_field(status: &str, key: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
}

fn can_write(dir: &str) -> bool {
    let path = format!("{dir}/.test_app_probe_{}", std::process::id());
    let ok = std::fs::write(&path, b"x").is_ok();
    let _ = std::fs::remove_file(&path);
    ok
}

fn probe() -> Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let first = |key: &str| {
        status_field(&status, key)
            .and_then(|v| v.split_whitespace().next().map(str::to_string))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let mut interfaces: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    interfaces.sort();
    let cap_eff = status_field(&status, "CapEff:").and_then(|v| u64::from_str_radix(&v, 16).ok());
    json!({
        "step": "probe",
        "uid": first("Uid:"),
        "gid": first("Gid:"),
        "interfaces": interfaces,
        "cap_eff": cap_eff,
        "no_new_privs": first("NoNewPrivs:"),
        "can_write_root": can_write(""),
        "can_write_tmp": can_write("/tmp"),
    })
}

fn env_names() -> Value {
    let mut names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("FOLD_CLIENT_"))
        .collect();
    names.sort();
    json!({"step": "env", "names": names})
}

async fn serve(cached: &mut Option<Client>, every: Duration) -> ! {
    let mut n: u64 = 0;
    loop {
        n += 1;
        let result = match client(cached).await {
            Ok(c) => query_step(&c).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(_) => emit(&json!({"step": "serve", "n": n, "ok": true})),
            Err(e) => emit(&json!({"step": "serve", "n": n, "ok": false, "error": e})),
        }
        tokio::time::sleep(every).await;
    }
}

fn hog() -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch every page, so the memory is really used.
        kept.push(vec![7u8; 1 << 20]);
        if kept.len() % 16 == 0 {
            emit(&json!({"step": "hog", "mib": kept.len()}));
        }
    }
}

fn ignore_term() -> Result<(), Failure> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        while term.recv().await.is_some() {
            emit(&json!({"step": "ignore-term", "got": "SIGTERM"}));
        }
    });
    Ok(())
}

fn number<T: std::str::FromStr>(
    args: &mut impl Iterator<Item = String>,
    step: &str,
) -> Result<T, Failure> {
    args.next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("{step} needs a number").into())
}

async fn step(
    name: &str,
    args: &mut impl Iterator<Item = String>,
    cached: &mut Option<Client>,
) -> Result<(), Failure> {
    match name {
        "query" => emit(&query_step(&client(cached).await?).await?),
        "probe" => emit(&probe()),
        "env" => emit(&env_names()),
        "serve" => serve(cached, Duration::from_millis(number(args, name)?)).await,
        "sleep" => tokio::time::sleep(Duration::from_secs_f64(number(args, name)?)).await,
        "ignore-term" => ignore_term()?,
        "exit" => std::process::exit(number(args, name)?),
        "hog" => hog(),
        other => return Err(format!("unknown step {other:?}").into()),
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        args.push("query".into());
    }
    let mut args = args.into_iter();
    let mut cached = None;
    let mut failed = false;
    while let Some(name) = args.next() {
        if let Err(e) = step(&name, &mut args, &mut cached).await {
            emit(&json!({"step": name, "ok": false, "error": e.to_string()}));
            failed = true;
        }
    }
    std::process::exit(i32::from(failed));
}
