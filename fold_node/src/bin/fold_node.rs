//! `fold_node`: serve a data node, or inspect and change its data directory.
//!
//! ```text
//! fold_node --data DIR serve [--socket PATH | --tcp 127.0.0.1:PORT]
//! fold_node --data DIR schema list|show NAME|create FILE|delete NAME [--force]
//! fold_node --data DIR query SCHEMA [--filter JSON] [--fields a,b] [--order-by [-]FIELD] [--limit N]
//! fold_node --data DIR dump [SCHEMA...]
//! ```
//!
//! Admin commands open the database directly (safe beside a running node: SQLite's WAL
//! mode serialises writers). Every command takes `--json` for output meant for scripts.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use fold_ipc::operation::DeleteSchemaResult;
use fold_ipc::query::{Filter, OrderBy, Query, QueryResult, MAX_LIMIT};
use fold_ipc::schema::SchemaDef;
use fold_ipc::server::ConnectionLimits;
use fold_ipc::Operation;
use fold_node::{Durability, Listener, Node, NodeConfig, NodeSecret};
use serde_json::Value;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "fold_node", version, about = "FoldClient data node")]
struct Cli {
    /// The node's data directory (created with mode 0700 if missing).
    #[arg(long, global = true, env = "FOLD_NODE_DATA")]
    data: Option<PathBuf>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Writer recorded for changes made without an app id.
    #[arg(long, global = true, default_value = fold_node::DEFAULT_IDENTITY)]
    identity: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the node on a Unix socket (default) or loopback TCP until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Inspect or change schemas.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Query records of a schema (one page; pass --cursor for the next).
    Query(QueryArgs),
    /// Print every schema and all its records.
    Dump {
        /// Only these schemas.
        schemas: Vec<String>,
    },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Unix socket path [default: DATA/node.sock]. Its directory must be private (0700).
    #[arg(long, conflicts_with = "tcp")]
    socket: Option<PathBuf>,
    /// Serve loopback TCP on this address instead; requests must carry the node secret.
    #[arg(long)]
    tcp: Option<SocketAddr>,
    /// The node secret for TCP; by default read from (or generated into) DATA/node.secret.
    #[arg(
        long = "secret-from-env",
        env = "FOLD_NODE_SECRET",
        hide_env_values = true,
        hide = true
    )]
    secret: Option<String>,
    /// Commit durability: full (fsync every commit) or normal (survives process crashes only).
    #[arg(long, value_enum, default_value_t = Sync::Full)]
    sync: Sync,
    /// Largest request frame accepted, in bytes.
    #[arg(long, default_value_t = fold_ipc::frame::DEFAULT_MAX_FRAME)]
    max_frame: usize,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Sync {
    Full,
    Normal,
}

#[derive(Subcommand, Debug)]
enum SchemaCommand {
    /// List schema names.
    List,
    /// Print one schema's definition.
    Show { name: String },
    /// Create a schema from a JSON definition file (`-` for stdin).
    Create { file: PathBuf },
    /// Delete a schema; with --force also when it holds records.
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
struct QueryArgs {
    schema: String,
    /// Filter tree as JSON, e.g. '{"op":"eq","field":"author","value":"alice"}'.
    #[arg(long)]
    filter: Option<String>,
    /// Comma-separated fields to return besides `id`.
    #[arg(long, value_delimiter = ',')]
    fields: Option<Vec<String>>,
    /// Order key; prefix with '-' for descending. Repeatable.
    #[arg(long = "order-by", allow_hyphen_values = true)]
    order_by: Vec<String>,
    #[arg(long)]
    limit: Option<u32>,
    #[arg(long)]
    offset: Option<u64>,
    #[arg(long)]
    cursor: Option<String>,
    /// Print SQLite's query plan instead of running the query.
    #[arg(long)]
    explain: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FOLD_NODE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let outcome = (|| {
        let data = cli
            .data
            .clone()
            .context("--data DIR (or FOLD_NODE_DATA) is required")?;
        let runtime =
            fold_ipc::heavy::serving_runtime().context("cannot start the async runtime")?;
        runtime.block_on(run(cli, data))
    })();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fold_node: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, data: PathBuf) -> Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Serve(args) => serve(data, cli.identity, args, json).await,
        command => {
            let node = Node::open_with(NodeConfig {
                identity: cli.identity,
                ..NodeConfig::new(&data)
            })
            .with_context(|| format!("cannot open the node in {}", data.display()))?;
            admin(&node, command, json).await
        }
    }
}

async fn serve(data: PathBuf, identity: String, args: ServeArgs, json: bool) -> Result<()> {
    let config = NodeConfig {
        identity,
        durability: match args.sync {
            Sync::Full => Durability::Full,
            Sync::Normal => Durability::Normal,
        },
        ..NodeConfig::new(&data)
    };
    let node = Node::open_with(config)
        .with_context(|| format!("cannot open the node in {}", data.display()))?;
    let (listener, address) = match args.tcp {
        Some(addr) => {
            let secret = match args.secret {
                Some(s) => NodeSecret::new(&s)?,
                None => {
                    let path = NodeSecret::default_path(&data);
                    let (secret, created) = NodeSecret::load_or_create(&path)?;
                    if created {
                        eprintln!(
                            "fold_node: generated a node secret in {} (mode 0600)",
                            path.display()
                        );
                    }
                    secret
                }
            };
            let listener = fold_node::bind_tcp(addr).await?;
            let bound = listener.local_addr()?;
            (Listener::Tcp { listener, secret }, format!("tcp:{bound}"))
        }
        None => {
            let path = args.socket.unwrap_or_else(|| data.join("node.sock"));
            let listener = fold_node::bind_unix(&path).await?;
            (Listener::Unix(listener), format!("unix:{}", path.display()))
        }
    };
    if json {
        println!("{}", serde_json::json!({ "listening": address }));
    } else {
        println!("fold_node: listening on {address}");
    }
    let limits = ConnectionLimits {
        max_frame: args.max_frame,
        ..ConnectionLimits::default()
    };
    fold_node::serve(listener, node, limits, shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the node with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

async fn exec(node: &Node, op: Operation) -> Result<Value> {
    let raw = node
        .execute(None, op)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(serde_json::from_str(raw.get())?)
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn admin(node: &Node, command: Command, json: bool) -> Result<()> {
    match command {
        Command::Serve(_) => unreachable!("handled by run"),
        Command::Schema(SchemaCommand::List) => {
            let v = exec(node, Operation::ListSchemas).await?;
            if json {
                return print_json(&v);
            }
            for name in v["schemas"].as_array().into_iter().flatten() {
                println!("{}", name.as_str().unwrap_or_default());
            }
        }
        Command::Schema(SchemaCommand::Show { name }) => {
            print_json(&exec(node, Operation::GetSchema { name }).await?)?;
        }
        Command::Schema(SchemaCommand::Create { file }) => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let def: SchemaDef = serde_json::from_str(&text).context("not a schema definition")?;
            let name = def.name.clone();
            let v = exec(node, Operation::CreateSchema(def)).await?;
            if json {
                return print_json(&v);
            }
            println!("created schema {name}");
        }
        Command::Schema(SchemaCommand::Delete { name, force }) => {
            let v = exec(
                node,
                Operation::DeleteSchema {
                    name: name.clone(),
                    force,
                },
            )
            .await?;
            if json {
                return print_json(&v);
            }
            let deleted: DeleteSchemaResult = serde_json::from_value(v)?;
            println!("deleted schema {name} ({} records)", deleted.records);
        }
        Command::Query(args) => query(node, args, json).await?,
        Command::Dump { schemas } => dump(node, schemas, json).await?,
    }
    Ok(())
}

async fn query(node: &Node, args: QueryArgs, json: bool) -> Result<()> {
    let mut q = Query::new(args.schema);
    q.fields = args.fields;
    q.limit = args.limit;
    q.offset = args.offset;
    q.cursor = args.cursor;
    if let Some(f) = args.filter {
        q.filter =
            Some(serde_json::from_str::<Filter>(&f).context("--filter is not a filter tree")?);
    }
    q.order_by = args
        .order_by
        .into_iter()
        .map(|f| match f.strip_prefix('-') {
            Some(field) => OrderBy {
                field: field.into(),
                desc: true,
            },
            None => OrderBy {
                field: f,
                desc: false,
            },
        })
        .collect();
    if args.explain {
        let plan = node.explain(q).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        if json {
            return print_json(&serde_json::json!({ "plan": plan }));
        }
        for line in plan {
            println!("{line}");
        }
        return Ok(());
    }
    let v = exec(node, Operation::Query(q)).await?;
    if json {
        return print_json(&v);
    }
    let page: QueryResult = serde_json::from_value(v)?;
    for row in &page.rows {
        println!("{}", serde_json::to_string(row)?);
    }
    if let Some(c) = page.next_cursor {
        eprintln!("more rows: --cursor {c}");
    }
    Ok(())
}

async fn dump(node: &Node, mut schemas: Vec<String>, json: bool) -> Result<()> {
    if schemas.is_empty() {
        let v = exec(node, Operation::ListSchemas).await?;
        schemas = serde_json::from_value(v["schemas"].clone())?;
    }
    let mut out = Vec::new();
    for name in schemas {
        let def = exec(node, Operation::GetSchema { name: name.clone() }).await?;
        let mut rows = Vec::new();
        let mut cursor = None;
        loop {
            let mut q = Query::new(&name).limit(MAX_LIMIT);
            q.cursor = cursor;
            let page: QueryResult = serde_json::from_value(exec(node, Operation::Query(q)).await?)?;
            rows.extend(page.rows.into_iter().map(Value::Object));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        if json {
            out.push(serde_json::json!({ "schema": def, "records": rows }));
        } else {
            println!("# {name}: {} records", rows.len());
            println!("{}", serde_json::to_string(&def)?);
            for row in rows {
                println!("{}", serde_json::to_string(&row)?);
            }
        }
    }
    if json {
        print_json(&serde_json::json!({ "schemas": out }))?;
    }
    Ok(())
}
