//! A [`log`] backend printing `[LEVEL target] message` lines to the console.
//!
//! Installed at start-up. The level comes from the environment variable
//! `KILN_LOG` (`off`, `error`, `warn`, `info`, `debug` or `trace`, any case;
//! default `info`), e.g. `kiln run app.kiln -e KILN_LOG=debug`. Use the `log`
//! crate's macros (`log::info!(...)`) in the application.

use core::fmt::Write;
use log::{LevelFilter, Log, Metadata, Record};

/// The console logger.
struct ConsoleLogger;

static LOGGER: ConsoleLogger = ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut out = crate::console::Buffered::new(crate::console::write_bytes);
        let _ = writeln!(
            out,
            "[{} {}] {}",
            record.level(),
            record.target(),
            record.args()
        );
        out.flush();
    }

    fn flush(&self) {}
}

/// The level named by a `KILN_LOG` value; `None` if it names none.
pub fn parse_level(value: &str) -> Option<LevelFilter> {
    const LEVELS: [(&str, LevelFilter); 6] = [
        ("off", LevelFilter::Off),
        ("error", LevelFilter::Error),
        ("warn", LevelFilter::Warn),
        ("info", LevelFilter::Info),
        ("debug", LevelFilter::Debug),
        ("trace", LevelFilter::Trace),
    ];
    let value = value.trim();
    LEVELS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(value))
        .map(|&(_, level)| level)
}

/// Installs the logger with the level from `KILN_LOG`; called by `_start`.
/// An unknown `KILN_LOG` value keeps the default and says so.
pub(crate) fn init() {
    let configured = crate::env::var("KILN_LOG");
    let level = configured.and_then(parse_level);
    log::set_max_level(level.unwrap_or(LevelFilter::Info));
    // Fails only if a logger is already installed; keep that one then.
    let _ = log::set_logger(&LOGGER);
    if let (Some(value), None) = (configured, level) {
        log::warn!(target: "kiln_rt", "KILN_LOG={value:?} is not a level; using info");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_in_any_case() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level(" TRACE "), Some(LevelFilter::Trace));
        assert_eq!(parse_level("Off"), Some(LevelFilter::Off));
        assert_eq!(parse_level("verbose"), None);
        assert_eq!(parse_level(""), None);
    }
}
