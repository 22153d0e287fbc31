//! What a service's instances print, and what kilnd says about them, kept
//! in a bounded ring per service for `kiln logs`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes of text one service keeps; older lines are dropped first.
pub const RING_BYTES: usize = 256 * 1024;
/// Longest line kept; longer output is cut into pieces of this size.
pub const LINE_MAX: usize = 4096;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The instance's console (the tender's standard output).
    Console,
    /// The tender's standard error (start-up errors, crash reports).
    Tender,
    /// kilnd itself (started, ready, stopped, exited).
    Kilnd,
}

impl Source {
    fn tag(self) -> &'static str {
        match self {
            Source::Console => "out",
            Source::Tender => "err",
            Source::Kilnd => "kilnd",
        }
    }
}

/// One line.
#[derive(Debug, Clone)]
pub struct Line {
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The instance, or 0 for lines about the service as a whole.
    pub instance: u64,
    /// Where it came from.
    pub source: Source,
    /// The text, without its newline.
    pub text: String,
}

/// A bounded ring of lines.
#[derive(Debug, Default)]
pub struct LogRing {
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<Line>,
    bytes: usize,
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl LogRing {
    /// Appends a line (cut to [`LINE_MAX`]).
    pub fn push(&self, instance: u64, source: Source, text: &str) {
        let mut text = text.trim_end_matches(['\n', '\r']).to_string();
        if text.len() > LINE_MAX {
            let mut cut = LINE_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        r.bytes += text.len();
        r.lines.push_back(Line {
            unix_ms: unix_ms(),
            instance,
            source,
            text,
        });
        while r.bytes > RING_BYTES {
            match r.lines.pop_front() {
                Some(old) => r.bytes -= old.text.len(),
                None => break,
            }
        }
    }

    /// The last `n` lines, formatted one per line:
    /// `UNIX_MS #INSTANCE SOURCE TEXT`.
    pub fn tail(&self, n: usize) -> String {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let skip = r.lines.len().saturating_sub(n);
        let mut out = String::new();
        for l in r.lines.iter().skip(skip) {
            out.push_str(&format!(
                "{}.{:03} #{} {} {}\n",
                l.unix_ms / 1000,
                l.unix_ms % 1000,
                l.instance,
                l.source.tag(),
                l.text
            ));
        }
        out
    }
}

/// Splits a byte stream into lines of at most [`LINE_MAX`] bytes.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; calls `line` for every complete (or over-long) line.
    pub fn feed(&mut self, mut bytes: &[u8], mut line: impl FnMut(&str)) {
        while !bytes.is_empty() {
            let room = LINE_MAX - self.partial.len();
            let take = bytes.len().min(room);
            match bytes[..take].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.partial.extend_from_slice(&bytes[..i]);
                    line(&String::from_utf8_lossy(&self.partial));
                    self.partial.clear();
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.partial.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.partial.len() == LINE_MAX {
                        line(&String::from_utf8_lossy(&self.partial));
                        self.partial.clear();
                    }
                }
            }
        }
    }

    /// Emits what is left at end of stream.
    pub fn finish(&mut self, mut line: impl FnMut(&str)) {
        if !self.partial.is_empty() {
            line(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_lines_within_its_budget() {
        let ring = LogRing::default();
        let line = "x".repeat(1000);
        for i in 0..1000 {
            ring.push(i, Source::Console, &line);
        }
        let r = ring.inner.lock().unwrap();
        assert!(r.bytes <= RING_BYTES);
        assert_eq!(r.lines.back().unwrap().instance, 999);
        assert_eq!(r.lines.len(), RING_BYTES / 1000);
    }

    #[test]
    fn tail_formats_the_last_lines() {
        let ring = LogRing::default();
        ring.push(1, Source::Console, "one\n");
        ring.push(2, Source::Kilnd, "two");
        let t = ring.tail(1);
        assert!(t.ends_with("#2 kilnd two\n"), "{t}");
        assert_eq!(ring.tail(10).lines().count(), 2);
    }

    #[test]
    fn splitter_handles_partial_and_long_lines() {
        let mut s = LineSplitter::default();
        let mut got = Vec::new();
        s.feed(b"ab", |l| got.push(l.to_string()));
        s.feed(b"c\nde\n\nf", |l| got.push(l.to_string()));
        assert_eq!(got, ["abc", "de", ""]);
        s.finish(|l| got.push(l.to_string()));
        assert_eq!(got.last().unwrap(), "f");
        let long = vec![b'y'; LINE_MAX * 2 + 5];
        let mut got = Vec::new();
        s.feed(&long, |l| got.push(l.len()));
        s.finish(|l| got.push(l.len()));
        assert_eq!(got, [LINE_MAX, LINE_MAX, 5]);
    }
}
