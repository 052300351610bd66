//! tracing setup: plain or JSON lines on stderr, one line per event.
//!
//! One event is one line, whatever a peer sends: strings a client or server chose (user,
//! database, application_name, error texts that echo them) go into fields through
//! [`Escaped`] (control characters escaped, length bounded), and the plain format
//! escapes any control character left in a field or message (JSON escapes them itself).

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Characters of a peer-supplied string shown in a log line; the rest becomes "…".
const MAX_SHOWN: usize = 256;

/// A string from a peer, fit for a log line: `\n`, `\r`, `\t`, `\\` and other control
/// characters escaped (`\u{1b}`), at most 256 characters (then "…").
/// In JSON lines the serializer escapes (a second escape would double the backslashes);
/// only the length bound and the line separators JSON leaves alone apply then.
pub struct Escaped<'a>(pub &'a str);

/// JSON lines are on (set by [`init`]).
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let json = JSON.load(std::sync::atomic::Ordering::Relaxed);
        let mut out = EscapeControl(f);
        for (i, c) in self.0.chars().enumerate() {
            if i == MAX_SHOWN {
                return out.0.write_char('…');
            }
            if json {
                match c {
                    '\u{2028}' | '\u{2029}' => write!(out.0, "\\u{{{:x}}}", c as u32)?,
                    c => out.0.write_char(c)?,
                }
                continue;
            }
            if c == '\\' {
                out.0.write_str("\\\\")?;
            } else {
                out.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Writes through, with control characters escaped.
struct EscapeControl<W>(W);

impl<W: fmt::Write> fmt::Write for EscapeControl<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                // Some viewers break lines at U+2028/U+2029 too.
                c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                    write!(self.0, "\\u{{{:x}}}", c as u32)?
                }
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Install the global subscriber. `level` is an EnvFilter directive ("info",
/// "pgtenant=debug,info"); RUST_LOG, when set and valid, wins so that a developer can
/// turn up one module without editing the config.
///
/// Safe to call more than once: only the first call installs anything (a later one, e.g.
/// from a test, is ignored rather than panicking). Log level changes on reload are not
/// applied; that would need a reload handle.
pub fn init(format: LogFormat, level: &str) {
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let from_env = rust_log.as_deref().and_then(|v| EnvFilter::try_new(v).ok());
    let bad_rust_log = rust_log.is_some() && from_env.is_none();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));

    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes are noise in a file or a Kubernetes log collector.
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match format {
        // Fields as the default formatter writes them (`message key=value ...`, str values
        // quoted), but no control character reaches the line: a value with a newline
        // cannot forge a second line.
        LogFormat::Plain => builder
            .fmt_fields(
                tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
                    match field.name() {
                        "message" => {}
                        name => write!(w, "{}=", name.trim_start_matches("r#"))?,
                    }
                    write!(EscapeControl(w), "{value:?}")
                })
                .delimited(" "),
            )
            .try_init()
            .is_ok(),
        LogFormat::Json => {
            let ok = builder.json().try_init().is_ok();
            if ok {
                JSON.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            ok
        }
    };
    if installed && bad_rust_log {
        tracing::warn!(
            fallback = level,
            "RUST_LOG is not a valid filter; ignoring it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_has_no_control_characters_and_a_bounded_length() {
        assert_eq!(
            Escaped("evil\nFAKE LINE\r\tx\u{1b}[31m\\n").to_string(),
            "evil\\nFAKE LINE\\r\\tx\\u{1b}[31m\\\\n"
        );
        assert_eq!(Escaped("app\u{85}").to_string(), "app\\u{85}");
        assert_eq!(Escaped("plain name").to_string(), "plain name");
        let long = "é".repeat(300);
        let shown = Escaped(&long).to_string();
        assert_eq!(shown.chars().count(), 257);
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn init_twice_does_not_panic() {
        init(LogFormat::Json, "info");
        init(LogFormat::Plain, "not a = valid filter");
        tracing::info!("logging works");
    }
}
