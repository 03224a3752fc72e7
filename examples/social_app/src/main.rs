//! A small social app on FoldClient: users, posts and comments, through its grants only.
//!
//! Run with `scripts/run_social_app.sh` (sandboxed in Docker) or
//! `scripts/run_social_app.sh --direct` (dev mode, NOT sandboxed). By hand:
//!
//! ```sh
//! RUSTFLAGS="-C target-feature=+crt-static" \
//!     cargo build -p example-social_app --target x86_64-unknown-linux-gnu
//! BIN=target/x86_64-unknown-linux-gnu/debug/social_app
//! GRANTS=$($BIN --print-grants | sed 's/^/--grant /')
//! fold_client app install social --binary $BIN $GRANTS
//! fold_client app launch social --wait     # or --direct --wait for dev mode
//! fold_client app logs social
//! ```
//!
//! What it does:
//!
//! 1. creates the schemas `user`, `post` and `comment` (one that exists already is kept, so
//!    the app can run again on the same node; one the operator created is used as is);
//! 2. creates the users alice, bob and carol (unless present) and a few posts;
//! 3. reads a feed: posts by alice or bob, drafts left out, newest first, at most 5, as typed
//!    rows (`query_as::<Post>`);
//! 4. carol comments on the newest post, and the post's comments are read back;
//! 5. alice edits her post, and the post's history shows every version and who wrote it;
//! 6. asks for something it is not granted, to show the refusal;
//! 7. prints a summary and exits 0; on any failure it prints what failed and exits 1.
//!
//! `social_app --print-grants` prints the grants it needs, one per line, for installers.

use anyhow::{bail, Context as _, Result};
use fold_ipc::client::{Client, Error};
use fold_ipc::operation::{HistoryResult, MutationKind};
use fold_ipc::query::{and, eq, is_in, not, prefix, Query};
use fold_ipc::schema::{FieldDef, FieldType, SchemaDef};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

/// Everything this app needs, and nothing more.
const GRANTS: &[&str] = &[
    "create_schema:user",
    "create_schema:post",
    "create_schema:comment",
    "query:user",
    "query:post",
    "query:comment",
    "mutation:user",
    "mutation:post",
    "mutation:comment",
    "history:post",
];

/// (handle, display name) of the users the app creates.
const USERS: [(&str, &str); 3] = [
    ("alice", "Alice Liddell"),
    ("bob", "Bob Marley"),
    ("carol", "Carol Danvers"),
];

/// (author, title, body) of the posts each run creates, oldest first.
const POSTS: [(&str, &str, &str); 5] = [
    ("alice", "Hello, fold", "My first post on a node I own."),
    (
        "bob",
        "Weekend hike",
        "Twelve kilometres and one very steep hill.",
    ),
    ("carol", "Soup recipe", "Leeks, potatoes, patience."),
    ("alice", "draft: half an idea", "Not ready to share."),
    (
        "bob",
        "Rust tip",
        "Clippy is a friend: run it with -D warnings.",
    ),
];

/// A row of `user`.
#[derive(Debug, Deserialize)]
struct User {
    handle: String,
}

/// A row of `post`, as the feed reads it.
#[derive(Debug, Deserialize)]
struct Post {
    id: String,
    author: String,
    title: String,
    created: i64,
}

/// A row of `comment`.
#[derive(Debug, Deserialize)]
struct Comment {
    author: String,
    body: String,
}

fn field(ty: FieldType, required: bool, indexed: bool) -> FieldDef {
    FieldDef {
        ty,
        required,
        indexed,
    }
}

fn schema(name: &str, fields: [(&str, FieldDef); 4]) -> SchemaDef {
    SchemaDef {
        name: name.to_string(),
        fields: fields
            .into_iter()
            .map(|(n, f)| (n.to_string(), f))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// The app's three schemas.
fn schemas() -> [SchemaDef; 3] {
    use FieldType::{String as Text, Timestamp};
    [
        schema(
            "user",
            [
                ("handle", field(Text, true, true)),
                ("name", field(Text, true, false)),
                ("bio", field(Text, false, false)),
                ("joined", field(Timestamp, false, false)),
            ],
        ),
        schema(
            "post",
            [
                ("author", field(Text, true, true)),
                ("title", field(Text, true, false)),
                ("body", field(Text, false, false)),
                ("created", field(Timestamp, true, true)),
            ],
        ),
        schema(
            "comment",
            [
                ("post_id", field(Text, true, true)),
                ("author", field(Text, true, false)),
                ("body", field(Text, true, false)),
                ("created", field(Timestamp, true, true)),
            ],
        ),
    ]
}

fn action_name(action: MutationKind) -> &'static str {
    match action {
        MutationKind::Create => "create",
        MutationKind::Update => "update",
        MutationKind::Delete => "delete",
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Creates `def` unless it exists. Returns what happened, for the summary.
async fn ensure_schema(client: &Client, def: SchemaDef) -> Result<&'static str> {
    let name = def.name.clone();
    match client.create_schema(def).await {
        Ok(_) => Ok("created"),
        Err(Error::Conflict { .. }) => Ok("already there"),
        // Not granted create_schema: fine if the operator created it and we may read it.
        Err(Error::Forbidden { message }) => {
            match client.query(Query::new(name.as_str()).limit(1)).await {
                Ok(_) => Ok("created by the operator"),
                Err(_) => bail!(
                    "cannot create schema {name} ({message}); grant create_schema:{name} \
                     or create the schema as the operator"
                ),
            }
        }
        Err(e) => Err(e).with_context(|| format!("creating schema {name}")),
    }
}

/// Step 1: the schemas, created through the app's grants.
async fn ensure_schemas(client: &Client) -> Result<()> {
    let mut outcomes = Vec::new();
    for def in schemas() {
        let name = def.name.clone();
        outcomes.push(format!("{name} {}", ensure_schema(client, def).await?));
    }
    println!("schemas: {}", outcomes.join(", "));
    Ok(())
}

/// Step 2a: the users, created once.
async fn ensure_users(client: &Client) -> Result<()> {
    let handles = USERS.map(|(handle, _)| handle);
    let present: Vec<User> = client
        .query_as(
            Query::new("user")
                .fields(["handle"])
                .filter(is_in("handle", handles)),
        )
        .await
        .context("reading users")?;
    let mut created = 0;
    for (handle, name) in USERS {
        if !present.iter().any(|u| u.handle == handle) {
            let data = json!({"handle": handle, "name": name, "joined": now_ms()});
            client
                .create("user", data)
                .await
                .with_context(|| format!("creating user {handle}"))?;
            created += 1;
        }
    }
    println!("users: {} ({created} new this run)", handles.join(", "));
    Ok(())
}

/// Step 2b: this run's posts, one second apart so "newest first" is well defined. Returns
/// their ids, oldest first.
async fn create_posts(client: &Client) -> Result<Vec<String>> {
    let base = now_ms();
    let mut ids = Vec::new();
    for (i, (author, title, body)) in (0i64..).zip(POSTS) {
        let created = base + i * 1000;
        let data = json!({"author": author, "title": title, "body": body, "created": created});
        let written = client
            .create("post", data)
            .await
            .with_context(|| format!("creating post {title:?}"))?;
        ids.push(written.id);
    }
    println!("posts: {} created", ids.len());
    Ok(ids)
}

/// Step 3: the feed, filtered and ordered by the node, as typed rows.
async fn read_feed(client: &Client) -> Result<Vec<Post>> {
    let query = Query::new("post")
        .fields(["author", "title", "created"])
        .filter(and([
            is_in("author", ["alice", "bob"]),
            not(prefix("title", "draft")),
        ]))
        .order_by_desc("created")
        .limit(5);
    let feed: Vec<Post> = client.query_as(query).await.context("reading the feed")?;
    println!("\nfeed: posts by alice or bob, no drafts, newest first (limit 5)");
    let newest = feed.first().map_or(0, |p| p.created);
    for post in &feed {
        let earlier_s = (newest - post.created) / 1000;
        println!(
            "  @{:<6} {:<22} {earlier_s:>4} s before the newest",
            post.author, post.title
        );
    }
    Ok(feed)
}

/// Step 4: carol comments on `post`; its comments are read back.
async fn comment_on(client: &Client, post: &Post) -> Result<Vec<Comment>> {
    let data = json!({
        "post_id": post.id,
        "author": "carol",
        "body": "Great tip, thanks!",
        "created": now_ms(),
    });
    client.create("comment", data).await.context("commenting")?;
    let comments: Vec<Comment> = client
        .query_as(
            Query::new("comment")
                .filter(eq("post_id", post.id.as_str()))
                .order_by("created"),
        )
        .await
        .context("reading comments")?;
    println!("\ncomments on {:?}:", post.title);
    for c in &comments {
        println!("  @{}: {}", c.author, c.body);
    }
    Ok(comments)
}

/// Step 5: alice edits post `id`; its history shows every version and who wrote it.
async fn edit_and_show_history(client: &Client, id: &str) -> Result<HistoryResult> {
    let patch = json!({"title": "Hello, fold (edited)", "body": "Edited: still my node."});
    let updated = client
        .update("post", id, patch)
        .await
        .context("editing a post")?;
    let history = client
        .history("post", id)
        .await
        .context("reading history")?;
    println!("\nhistory of post {id}:");
    let first_ts = history.versions.first().map_or(0, |v| v.timestamp);
    for v in &history.versions {
        let title = v
            .data
            .as_ref()
            .and_then(|d| d.get("title"))
            .and_then(|t| t.as_str())
            .unwrap_or("-");
        println!(
            "  v{} {:<6} by {} (+{} ms): title {title:?}",
            v.version,
            action_name(v.action),
            v.writer,
            v.timestamp.saturating_sub(first_ts)
        );
    }
    let me = client.app_id();
    let writers: Vec<&str> = history.versions.iter().map(|v| v.writer.as_str()).collect();
    if updated.version != 2 || writers != [me.as_str(), me.as_str()] {
        bail!(
            "unexpected history: now at version {}, writers {writers:?}",
            updated.version
        );
    }
    Ok(history)
}

/// Step 6: something the app is not granted. The daemon refuses it and audits the refusal.
async fn show_refusal(client: &Client) {
    let outcome = match client.query(Query::new("private_notes").limit(1)).await {
        Err(Error::Forbidden { message }) => format!("refused as expected (forbidden: {message})"),
        Err(e) => format!("refused ({e})"),
        Ok(_) => "ALLOWED: this app holds a wider grant than it needs".to_string(),
    };
    println!("\nreading schema private_notes: {outcome}");
}

/// Every post on the node, counted a page at a time (a cursor continues where a page ended).
async fn count_posts(client: &Client) -> Result<usize> {
    let (mut total, mut query) = (0, Query::new("post").fields(["author"]).limit(100));
    loop {
        let page = client
            .query(query.clone())
            .await
            .context("counting posts")?;
        total += page.rows.len();
        match page.next_cursor {
            Some(cursor) => query = query.cursor(cursor),
            None => return Ok(total),
        }
    }
}

async fn run(client: &Client) -> Result<()> {
    let pong = client.ping().await.context("ping")?;
    let sandbox = std::env::var("FOLD_CLIENT_SANDBOX").unwrap_or_else(|_| "unknown".into());
    println!(
        "social_app: connected as {} (protocol v{}, sandbox: {sandbox})",
        client.app_id(),
        pong.version
    );
    ensure_schemas(client).await?;
    ensure_users(client).await?;
    let post_ids = create_posts(client).await?;
    let feed = read_feed(client).await?;
    // This run's last post (bob's) is the newest, and drafts are left out.
    let newest = match feed.first() {
        Some(post) if post.id == post_ids[POSTS.len() - 1] => post,
        other => bail!(
            "the feed should start with this run's newest post {}, got {:?}",
            post_ids[POSTS.len() - 1],
            other.map(|p| &p.id)
        ),
    };
    if feed.iter().any(|p| p.title.starts_with("draft")) {
        bail!("the feed holds a draft although the filter leaves drafts out");
    }
    let comments = comment_on(client, newest).await?;
    let history = edit_and_show_history(client, &post_ids[0]).await?;
    show_refusal(client).await;
    let total = count_posts(client).await?;

    println!("\nsummary:");
    println!("  users     {}", USERS.len());
    println!(
        "  posts     {total} on the node, {} new this run",
        post_ids.len()
    );
    println!(
        "  feed      {} post(s) by alice or bob, newest first",
        feed.len()
    );
    println!("  comments  {} on {:?}", comments.len(), newest.title);
    println!(
        "  history   {} versions of post {}, all written by {}",
        history.versions.len(),
        post_ids[0],
        client.app_id()
    );
    println!("social_app: done");
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--print-grants") {
        for grant in GRANTS {
            println!("{grant}");
        }
        return ExitCode::SUCCESS;
    }
    let client = match Client::from_env().await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("social_app: cannot connect to the fold_client daemon: {e}");
            eprintln!("social_app: run me with `fold_client app launch` (it sets FOLD_CLIENT_*)");
            return ExitCode::FAILURE;
        }
    };
    match run(&client).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("social_app: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
