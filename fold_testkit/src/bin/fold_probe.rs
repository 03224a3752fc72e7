//! `fold_probe`: prints what this process can see of its confinement as one line of JSON.
//!
//! Built static by the tests (`fold_testkit::build_static_binary("fold_testkit",
//! "fold_probe")`) and run inside hardened containers. Exit status 0 on success, 1 when the
//! report cannot be collected (the reason goes to stderr).

use std::io::Write;
use std::process::ExitCode;

use fold_testkit::probe::ProbeReport;

fn main() -> ExitCode {
    let report = match ProbeReport::collect() {
        Ok(report) => report,
        Err(e) => {
            eprintln!("fold_probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    let line = match serde_json::to_string(&report) {
        Ok(line) => line,
        Err(e) => {
            eprintln!("fold_probe: encoding the report: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        eprintln!("fold_probe: writing the report: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
