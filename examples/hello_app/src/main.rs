//! The smallest complete FoldClient app: connect, ping, list the schemas it may see, print.
//!
//! Run with (dev mode, NOT sandboxed; a daemon must be serving `STATE`):
//!
//! ```sh
//! cargo build -p example-hello_app
//! fold_client --state-dir STATE app install hello --binary target/debug/hello_app
//! fold_client --state-dir STATE app launch hello --direct --wait
//! fold_client --state-dir STATE app logs hello
//! ```

use fold_ipc::client::blocking::Client;
use std::process::ExitCode;

fn main() -> ExitCode {
    match hello() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello_app: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hello() -> fold_ipc::client::Result<()> {
    let client = Client::from_env()?; // app id, socket and credentials, set by the daemon
    let pong = client.ping()?;
    println!("hello from {}: protocol v{}", client.app_id(), pong.version);
    let schemas = client.list_schemas()?; // only the schemas this app holds a grant on
    println!("{} schema(s) visible: {schemas:?}", schemas.len());
    Ok(())
}
