//! A container's stdout and stderr, copied into the app's size-capped [`LogFile`].
//!
//! A launch attaches before the container starts, so no output is missed. An adopted
//! container (daemon restart) is followed through the engine's log API from the time the
//! log file was last written, so lines the earlier daemon already wrote are not repeated
//! (lines still in flight when it died, within a few milliseconds, may be lost).

use super::super::logfile::{pump, LogFile};
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::LogsOptionsBuilder;
use bollard::Docker;
use futures::{Stream, StreamExt};
use std::path::Path;
use std::time::UNIX_EPOCH;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// Buffer between the engine stream and the line splitter, per stream.
const PIPE: usize = 64 * 1024;

/// Spawns the copy of `output` into `log`. With `after_nanos`, each message starts with
/// the engine's RFC 3339 timestamp: messages at or before it are dropped, and the
/// timestamp is stripped. The task ends when the stream does (the container stopped).
pub fn spawn_pump<S>(
    tasks: &TaskTracker,
    output: S,
    log: LogFile,
    after_nanos: Option<i128>,
) -> JoinHandle<()>
where
    S: Stream<Item = Result<LogOutput, BollardError>> + Send + 'static,
{
    tasks.spawn(async move {
        let (mut out_w, out_r) = tokio::io::duplex(PIPE);
        let (mut err_w, err_r) = tokio::io::duplex(PIPE);
        let demux = async move {
            let mut output = std::pin::pin!(output);
            while let Some(item) = output.next().await {
                let (stderr, bytes) = match item {
                    Ok(LogOutput::StdErr { message }) => (true, message),
                    Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                        (false, message)
                    }
                    Ok(LogOutput::StdIn { .. }) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "container output stream ended with an error");
                        break;
                    }
                };
                let mut body: &[u8] = &bytes;
                if let Some(after) = after_nanos {
                    match split_timestamp(body) {
                        Some((ts, rest)) if ts > after => body = rest,
                        Some(_) => continue,
                        None => {}
                    }
                }
                let writer = if stderr { &mut err_w } else { &mut out_w };
                if writer.write_all(body).await.is_err() {
                    break;
                }
            }
            drop(out_w);
            drop(err_w);
        };
        let (out_log, err_log) = (log.clone(), log);
        tokio::join!(
            demux,
            pump(out_r, &out_log, "stdout"),
            pump(err_r, &err_log, "stderr")
        );
    })
}

/// Follows an adopted container's output from just after the log file's last write.
pub fn follow_adopted(
    tasks: &TaskTracker,
    docker: &Docker,
    container_id: &str,
    log: LogFile,
    log_path: &Path,
) -> JoinHandle<()> {
    let after = std::fs::metadata(log_path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX));
    let since = after.map_or(0, |n| {
        i32::try_from(n / 1_000_000_000 - 1).unwrap_or(i32::MAX)
    });
    let options = LogsOptionsBuilder::default()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .since(since)
        .build();
    let stream = docker.logs(container_id, Some(options));
    spawn_pump(tasks, stream, log, Some(after.unwrap_or(0)))
}

/// Splits `<RFC 3339 timestamp> <rest>` into nanoseconds since the epoch and the rest.
fn split_timestamp(message: &[u8]) -> Option<(i128, &[u8])> {
    let space = message.iter().take(40).position(|&b| b == b' ')?;
    let ts = std::str::from_utf8(&message[..space]).ok()?;
    Some((rfc3339_nanos(ts)?, &message[space + 1..]))
}

/// Parses the engine's `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (UTC) into nanoseconds.
fn rfc3339_nanos(ts: &str) -> Option<i128> {
    let (date, time) = ts.split_once('T')?;
    let time = time.strip_suffix('Z')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (t.next()??, t.next()??, t.next()??);
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: i64 = format!("{frac:0<9}").parse().ok()?;
    let secs = days_from_civil(y, m, day) * 86_400 + h * 3600 + mi * 60 + s;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_epoch_nanos() {
        assert_eq!(rfc3339_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_nanos("2024-03-01T12:00:01.5Z"),
            Some(1_709_294_401_500_000_000)
        );
        assert_eq!(
            rfc3339_nanos("2000-02-29T23:59:59.000000001Z"),
            Some(951_868_799_000_000_001)
        );
        assert_eq!(rfc3339_nanos("2024-03-01 12:00:01Z"), None);
        let (ts, rest) = split_timestamp(b"1970-01-01T00:00:01.25Z hello world\n").unwrap();
        assert_eq!(ts, 1_250_000_000);
        assert_eq!(rest, b"hello world\n");
    }

    #[tokio::test]
    async fn demuxes_streams_and_skips_old_timestamped_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let log = LogFile::open(&path, 1 << 20).unwrap();
        let msgs = vec![
            Ok(LogOutput::StdOut {
                message: "1970-01-01T00:00:01Z old\n".into(),
            }),
            Ok(LogOutput::StdOut {
                message: "1970-01-01T00:00:03Z new\n".into(),
            }),
            Ok(LogOutput::StdErr {
                message: "1970-01-01T00:00:04Z oops\n".into(),
            }),
        ];
        let tasks = TaskTracker::new();
        spawn_pump(
            &tasks,
            futures::stream::iter(msgs),
            log,
            Some(2_000_000_000),
        )
        .await
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        assert_eq!(lines, ["stderr: oops", "stdout: new"], "{text}");
    }
}
