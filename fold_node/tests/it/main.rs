//! Integration tests for `fold_node`, over a real socket (and, for `crash` and `cli`, the
//! real binary).

mod budget;
mod cli;
mod cost;
mod crash;
mod deadline;
mod fair;
mod history;
mod query;
mod quota;
mod records;
mod schemas;
mod support;
mod transport;
