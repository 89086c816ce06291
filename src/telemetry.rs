//! Logging: a `RUST_LOG`-style filter, JSON for machines, pretty for terminals.
//!
//! Lines are written by a dedicated thread in batches: with one audit line per decision,
//! a `write(2)` per line on the request path would cost more than the decision itself.

use std::fmt::{self, Write as _};
use std::io::{BufWriter, IsTerminal};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Lines that may wait for the writer thread. When stdout stalls, requests wait for room
/// rather than lose audit lines, as they would with a blocking write.
const QUEUED_LINES: usize = 8192;

/// Keeps the writer thread running; dropping it writes out what is queued. Hold it until
/// the process exits.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: WorkerGuard,
}

/// Installs the global subscriber. `RUST_LOG` wins over the configured filter.
pub fn init(settings: &LogSettings) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("tokengate-log")
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = if json {
        builder.event_format(JsonLines).try_init()
    } else {
        builder.try_init()
    };
    // A subscriber already set (tests) is fine.
    let _ = result;
    LogGuard { _writer: guard }
}

/// One JSON object per line with the event's fields at the top level, the shape of
/// tracing-subscriber's flattened JSON. Written straight into the subscriber's line
/// buffer: the stock JSON formatter goes through an `io::Write` adaptor that re-checks
/// UTF-8 on every small write, which made it most of the cost of an audit line.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _context: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = JsonLine {
            out: writer,
            scratch: String::new(),
        };
        write!(
            line.out,
            "{{\"timestamp\":\"{}\",\"level\":\"{}\"",
            humantime::format_rfc3339_micros(SystemTime::now()),
            metadata.level().as_str()
        )?;
        event.record(&mut line);
        line.key("target");
        push_json_string(&mut line.out, metadata.target());
        line.out.write_str("}\n")
    }
}

/// A line being written, and a scratch buffer for `Debug`/`Display` values.
struct JsonLine<'w> {
    out: Writer<'w>,
    scratch: String,
}

impl JsonLine<'_> {
    fn key(&mut self, name: &str) {
        let _ = self.out.write_char(',');
        push_json_string(&mut self.out, name);
        let _ = self.out.write_char(':');
    }

    fn number(&mut self, field: &Field, value: impl fmt::Display) {
        self.key(field.name());
        let _ = write!(self.out, "{value}");
    }
}

impl Visit for JsonLine<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field.name());
        push_json_string(&mut self.out, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.number(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.number(field, value);
        } else {
            self.record_str(field, &value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let _ = write!(scratch, "{value:?}");
        self.record_str(field, &scratch);
        self.scratch = scratch;
    }
}

/// Appends `value` as a JSON string (RFC 8259 §7). Writes into a `String` never fail.
fn push_json_string(out: &mut impl fmt::Write, value: &str) {
    let _ = out.write_char('"');
    let mut clean_from = 0;
    for (at, byte) in value.bytes().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        let _ = out.write_str(&value[clean_from..at]);
        let _ = if escaped.is_empty() {
            write!(out, "\\u{byte:04x}")
        } else {
            out.write_str(escaped)
        };
        clean_from = at + 1;
    }
    let _ = out.write_str(&value[clean_from..]);
    let _ = out.write_char('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_round_trip() {
        for value in [
            "plain",
            "quote \" back \\ slash",
            "line\nbreak\r\t",
            "\u{1}\u{1f}é✓",
            "",
        ] {
            let mut out = String::new();
            push_json_string(&mut out, value);
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), value);
        }
    }
}
