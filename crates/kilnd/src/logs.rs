//! What a service's instances print, and what kilnd says about them, kept
//! in a bounded ring per service for `kiln logs`.
//!
//! Memory is what guests control here, so every kept line is charged what
//! it really costs kilnd: its text plus [`LINE_OVERHEAD`] (its slot in the
//! ring, the ring's spare capacity, the allocation of its text). A ring
//! keeps at most [`RING_BYTES`]; all rings of a kilnd together keep at most
//! [`TOTAL_BYTES`], and when a line would go beyond that, the ring holding
//! the most gives up its oldest lines first. A run of empty lines from one
//! stream is kept as one line with a count: a flood of newlines costs one
//! line and a byte scan, and does not push out the lines that came before.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes one service keeps; older lines are dropped first.
pub const RING_BYTES: usize = 256 * 1024;
/// Bytes all services of one kilnd keep together (16 full rings).
pub const TOTAL_BYTES: usize = 4 << 20;
/// Longest line kept; longer output is cut into pieces of this size.
pub const LINE_MAX: usize = 4096;
/// What a kept line costs beyond its text: its [`Line`] in the ring, as much
/// again for the ring's spare capacity (a `VecDeque` doubles when it grows,
/// and is shrunk when it falls under half full), and the allocator's header
/// and rounding of the text's allocation.
pub const LINE_OVERHEAD: usize = 2 * std::mem::size_of::<Line>() + 32;

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

/// One kept line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Milliseconds since the Unix epoch (of the first, for a run).
    pub unix_ms: u64,
    /// The instance, or 0 for lines about the service as a whole.
    pub instance: u64,
    /// Where it came from.
    pub source: Source,
    /// The text, without its newline, at most [`LINE_MAX`] bytes.
    pub text: Box<str>,
    /// How many times in a row it came: more than 1 only for empty lines.
    pub repeat: u64,
}

impl Line {
    /// What keeping it costs against the budgets.
    pub fn cost(&self) -> usize {
        LINE_OVERHEAD + self.text.len()
    }
}

/// The text that stands for a run of `n` empty lines.
fn blank_run(n: u64) -> String {
    if n == 1 {
        String::new()
    } else {
        format!("[{n} empty lines]")
    }
}

/// The logs of every service of one kilnd, under one budget.
#[derive(Debug)]
pub struct LogStore {
    inner: Mutex<Store>,
    ring_max: usize,
    total_max: usize,
}

#[derive(Debug, Default)]
struct Store {
    rings: HashMap<u64, Ring>,
    next_id: u64,
    total: usize,
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<Line>,
    bytes: usize,
}

/// One service's ring, in its [`LogStore`]. Dropping it frees its lines.
#[derive(Debug)]
pub struct LogRing {
    store: Arc<LogStore>,
    id: u64,
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl LogStore {
    /// A store whose rings keep at most `ring_max` bytes each and
    /// `total_max` bytes together (as [`Line::cost`] counts them).
    pub fn new(ring_max: usize, total_max: usize) -> Arc<LogStore> {
        Arc::new(LogStore {
            inner: Mutex::new(Store::default()),
            ring_max,
            total_max,
        })
    }

    /// kilnd's store: [`RING_BYTES`] a ring, [`TOTAL_BYTES`] in all.
    pub fn standard() -> Arc<LogStore> {
        Self::new(RING_BYTES, TOTAL_BYTES)
    }

    /// A new, empty ring.
    pub fn ring(self: &Arc<Self>) -> LogRing {
        let mut s = self.lock();
        let id = s.next_id;
        s.next_id += 1;
        s.rings.insert(id, Ring::default());
        LogRing {
            store: self.clone(),
            id,
        }
    }

    /// What all rings keep, in bytes as [`Line::cost`] counts them.
    pub fn total(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store {
    /// Drops the oldest line of ring `id`; false when it has none.
    fn evict_oldest(&mut self, id: u64) -> bool {
        let Some(ring) = self.rings.get_mut(&id) else {
            return false;
        };
        let Some(old) = ring.lines.pop_front() else {
            return false;
        };
        ring.bytes -= old.cost();
        self.total -= old.cost();
        // Keep the spare capacity within what LINE_OVERHEAD charges for.
        let (len, cap) = (ring.lines.len(), ring.lines.capacity());
        if cap > 2 * len + 16 {
            ring.lines.shrink_to(len);
        }
        true
    }

    /// The ring keeping the most bytes.
    fn largest(&self) -> Option<u64> {
        self.rings
            .iter()
            .filter(|(_, r)| !r.lines.is_empty())
            .max_by_key(|(id, r)| (r.bytes, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }
}

impl LogRing {
    /// Appends a line (without its newline; cut to [`LINE_MAX`]).
    pub fn push(&self, instance: u64, source: Source, text: &str) {
        let mut text = text.trim_end_matches(['\n', '\r']);
        if text.len() > LINE_MAX {
            let mut cut = LINE_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text = &text[..cut];
        }
        self.add(instance, source, text, 1);
    }

    /// Appends what a [`LineSplitter`] found in an instance's output.
    pub fn push_piece(&self, instance: u64, source: Source, piece: Piece<'_>) {
        match piece {
            Piece::Line(b) | Piece::Cut(b) => {
                self.push(instance, source, &String::from_utf8_lossy(b))
            }
            Piece::Blank(n) => self.add(instance, source, "", n),
        }
    }

    fn add(&self, instance: u64, source: Source, text: &str, repeat: u64) {
        if repeat == 0 {
            return;
        }
        let store = &self.store;
        let mut s = store.lock();
        let Some(ring) = s.rings.get_mut(&self.id) else {
            return;
        };
        if text.is_empty() {
            if let Some(last) = ring.lines.back_mut() {
                if last.text.is_empty() && last.instance == instance && last.source == source {
                    last.repeat = last.repeat.saturating_add(repeat);
                    return;
                }
            }
        }
        let line = Line {
            unix_ms: unix_ms(),
            instance,
            source,
            text: text.into(),
            repeat,
        };
        let cost = line.cost();
        ring.bytes += cost;
        ring.lines.push_back(line);
        s.total += cost;
        while s
            .rings
            .get(&self.id)
            .is_some_and(|r| r.bytes > store.ring_max)
        {
            s.evict_oldest(self.id);
        }
        while s.total > store.total_max {
            match s.largest() {
                Some(id) => s.evict_oldest(id),
                None => break,
            };
        }
    }

    /// The last `n` lines, formatted one per line:
    /// `UNIX_MS #INSTANCE SOURCE TEXT` (a run of empty lines as
    /// `[N empty lines]`).
    pub fn tail(&self, n: usize) -> String {
        let s = self.store.lock();
        let Some(r) = s.rings.get(&self.id) else {
            return String::new();
        };
        let skip = r.lines.len().saturating_sub(n);
        let mut out = String::new();
        for l in r.lines.iter().skip(skip) {
            let text = if l.text.is_empty() {
                blank_run(l.repeat)
            } else {
                l.text.to_string()
            };
            out.push_str(&format!(
                "{}.{:03} #{} {} {}\n",
                l.unix_ms / 1000,
                l.unix_ms % 1000,
                l.instance,
                l.source.tag(),
                text
            ));
        }
        out
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> Vec<Line> {
        let s = self.store.lock();
        s.rings
            .get(&self.id)
            .map(|r| r.lines.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// What this ring keeps, in bytes as [`Line::cost`] counts them.
    pub fn bytes(&self) -> usize {
        let s = self.store.lock();
        s.rings.get(&self.id).map_or(0, |r| r.bytes)
    }
}

impl Drop for LogRing {
    fn drop(&mut self) {
        let mut s = self.store.lock();
        if let Some(r) = s.rings.remove(&self.id) {
            s.total -= r.bytes;
        }
    }
}

/// What a [`LineSplitter`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A line that ended with a newline (not included).
    Line(&'a [u8]),
    /// [`LINE_MAX`] bytes without a newline, or what was left at the end
    /// of the stream.
    Cut(&'a [u8]),
    /// This many empty lines in a row.
    Blank(u64),
}

impl Piece<'_> {
    /// As text for a person (invalid UTF-8 replaced, a run of empty lines
    /// as `[N empty lines]`).
    pub fn text(&self) -> String {
        match self {
            Piece::Line(b) | Piece::Cut(b) => String::from_utf8_lossy(b)
                .trim_end_matches('\r')
                .to_string(),
            Piece::Blank(n) => blank_run(*n),
        }
    }
}

/// Splits a byte stream into lines of at most [`LINE_MAX`] bytes, runs of
/// empty lines counted rather than handed out one by one.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; calls `out` for every complete (or over-long) line and
    /// every run of empty lines. Lines that lie wholly in `bytes` are handed
    /// out without a copy.
    pub fn feed(&mut self, mut bytes: &[u8], mut out: impl FnMut(Piece<'_>)) {
        while !bytes.is_empty() {
            if self.partial.is_empty() {
                let blanks = bytes.iter().take_while(|&&b| b == b'\n').count();
                if blanks > 0 {
                    out(Piece::Blank(blanks as u64));
                    bytes = &bytes[blanks..];
                    continue;
                }
                let take = bytes.len().min(LINE_MAX);
                match bytes[..take].iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        out(Piece::Line(&bytes[..i]));
                        bytes = &bytes[i + 1..];
                    }
                    None if take == LINE_MAX => {
                        out(Piece::Cut(&bytes[..take]));
                        bytes = &bytes[take..];
                    }
                    None => {
                        self.partial.extend_from_slice(bytes);
                        bytes = &[];
                    }
                }
            } else {
                let room = LINE_MAX - self.partial.len();
                let take = bytes.len().min(room);
                match bytes[..take].iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.partial.extend_from_slice(&bytes[..i]);
                        out(Piece::Line(&self.partial));
                        self.partial.clear();
                        bytes = &bytes[i + 1..];
                    }
                    None => {
                        self.partial.extend_from_slice(&bytes[..take]);
                        bytes = &bytes[take..];
                        if self.partial.len() == LINE_MAX {
                            out(Piece::Cut(&self.partial));
                            self.partial.clear();
                        }
                    }
                }
            }
        }
    }

    /// Hands out what is left at the end of the stream.
    pub fn finish(&mut self, mut out: impl FnMut(Piece<'_>)) {
        if !self.partial.is_empty() {
            out(Piece::Cut(&self.partial));
            self.partial.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_accounting(store: &LogStore, rings: &[&LogRing]) {
        let mut total = 0;
        for r in rings {
            let sum: usize = r.lines().iter().map(Line::cost).sum();
            assert_eq!(r.bytes(), sum);
            assert!(sum <= store.ring_max, "{sum} > {}", store.ring_max);
            total += sum;
        }
        assert_eq!(store.total(), total);
        assert!(total <= store.total_max, "{total} > {}", store.total_max);
    }

    #[test]
    fn ring_keeps_the_newest_lines_within_its_budget() {
        let store = LogStore::standard();
        let ring = store.ring();
        let line = "x".repeat(1000);
        for i in 0..1000 {
            ring.push(i, Source::Console, &line);
        }
        check_accounting(&store, &[&ring]);
        let lines = ring.lines();
        assert_eq!(lines.last().unwrap().instance, 999);
        assert_eq!(lines.len(), RING_BYTES / (1000 + LINE_OVERHEAD));
    }

    #[test]
    fn short_and_empty_lines_pay_for_what_they_cost() {
        let store = LogStore::standard();
        let ring = store.ring();
        // Alternating sources, so that no two empty lines in a row merge.
        for i in 0..100_000u64 {
            let source = if i % 2 == 0 {
                Source::Console
            } else {
                Source::Tender
            };
            ring.push(1, source, if i % 3 == 0 { "" } else { "a" });
        }
        check_accounting(&store, &[&ring]);
        assert!(
            ring.lines().len() <= RING_BYTES / LINE_OVERHEAD,
            "{} lines kept",
            ring.lines().len()
        );
        assert!(LINE_OVERHEAD >= 2 * std::mem::size_of::<Line>());
    }

    #[test]
    fn runs_of_empty_lines_are_one_line() {
        let store = LogStore::standard();
        let ring = store.ring();
        ring.push(1, Source::Console, "before");
        for _ in 0..1_000_000 {
            ring.push_piece(1, Source::Console, Piece::Blank(3));
        }
        ring.push(1, Source::Console, "\r");
        ring.push(2, Source::Console, "");
        ring.push(2, Source::Console, "after");
        let lines = ring.lines();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[0].text.as_ref(), "before", "not pushed out");
        assert_eq!(lines[1].repeat, 3_000_001);
        assert_eq!(lines[2].repeat, 1, "another instance's blank is its own");
        let t = ring.tail(10);
        assert!(t.contains("#1 out [3000001 empty lines]\n"), "{t}");
        assert!(t.contains("#2 out \n"), "{t}");
        check_accounting(&store, &[&ring]);
    }

    #[test]
    fn the_total_budget_is_taken_from_the_largest_ring_first() {
        let ring_max = 64 * 1024;
        let store = LogStore::new(ring_max, 100 * 1024);
        let big = store.ring();
        let small = store.ring();
        let line = "y".repeat(500);
        for i in 0..20 {
            small.push(i, Source::Console, &line);
        }
        let small_before = small.lines();
        // `big` fills its own ring (64 KiB); then a third ring pushes the
        // total over 100 KiB.
        for i in 0..1000 {
            big.push(i, Source::Console, &line);
        }
        check_accounting(&store, &[&big, &small]);
        let third = store.ring();
        for i in 0..100 {
            third.push(i, Source::Console, &line);
        }
        check_accounting(&store, &[&big, &small, &third]);
        assert_eq!(
            small.lines(),
            small_before,
            "the smallest ring kept everything"
        );
        assert!(big.bytes() < ring_max - 10 * 1024, "{}", big.bytes());
        assert_eq!(big.lines().last().unwrap().instance, 999, "newest kept");
        // A ring that goes away frees its share.
        let before = store.total();
        let freed = big.bytes();
        drop(big);
        assert_eq!(store.total(), before - freed);
        check_accounting(&store, &[&small, &third]);
    }

    #[test]
    fn evictions_give_back_the_rings_capacity() {
        let store = LogStore::new(1 << 20, 1 << 20);
        let a = store.ring();
        for i in 0..4000 {
            a.push(i, Source::Console, "z");
        }
        let b = store.ring();
        let line = "w".repeat(LINE_MAX);
        for i in 0..400 {
            b.push(i, Source::Console, &line);
        }
        let s = store.lock();
        for r in s.rings.values() {
            assert!(
                r.lines.capacity() <= 2 * r.lines.len() + 16,
                "capacity {} for {} lines",
                r.lines.capacity(),
                r.lines.len()
            );
        }
    }

    #[test]
    fn tail_formats_the_last_lines() {
        let store = LogStore::standard();
        let ring = store.ring();
        ring.push(1, Source::Console, "one\n");
        ring.push(2, Source::Kilnd, "two");
        let t = ring.tail(1);
        assert!(t.ends_with("#2 kilnd two\n"), "{t}");
        assert_eq!(ring.tail(10).lines().count(), 2);
    }

    fn split_all(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::default();
        let mut got = Vec::new();
        let mut record = |p: Piece<'_>| {
            got.push(match p {
                Piece::Line(b) => format!("L{}", String::from_utf8_lossy(b)),
                Piece::Cut(b) => format!("C{}", b.len()),
                Piece::Blank(n) => format!("B{n}"),
            })
        };
        for c in chunks {
            s.feed(c, &mut record);
        }
        s.finish(&mut record);
        got
    }

    #[test]
    fn splitter_handles_partial_and_long_lines_and_counts_blanks() {
        assert_eq!(
            split_all(&[b"ab", b"c\nde\n\n\nf"]),
            ["Labc", "Lde", "B2", "C1"].map(String::from)
        );
        let long = vec![b'y'; LINE_MAX * 2 + 5];
        assert_eq!(
            split_all(&[&long]),
            ["C4096", "C4096", "C5"].map(String::from)
        );
        assert_eq!(split_all(&[&[b'\n'; 100_000]]), ["B100000"]);
        assert_eq!(split_all(&[b"\n\n", b"\nx\n"]), ["B2", "B1", "Lx"]);
    }
}
