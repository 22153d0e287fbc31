//! Instance output as kilnd receives it: any bytes, in any chunking, on
//! three streams (two sharing a ring), through the real `LineSplitter`
//! into the real `LogRing`s of one `LogStore` with small budgets.
//!
//! Properties: no panic; no piece is longer than LINE_MAX and the pieces
//! of a stream give back its bytes exactly; after every push each ring and
//! the store keep within their budgets and their accounting adds up; and
//! what a ring keeps is exactly the newest entries it was given (nothing
//! is lost but by budgeted eviction of the oldest).
#![no_main]

use kilnd::logs::{Line, LineSplitter, LogRing, LogStore, Piece, Source, LINE_MAX, LINE_OVERHEAD};
use libfuzzer_sys::fuzz_target;

/// The entry a ring should make of a piece (kilnd's own rules, restated).
fn expect(model: &mut Vec<(u64, Source, String, u64)>, inst: u64, src: Source, p: Piece<'_>) {
    let (text, n) = match p {
        Piece::Line(b) | Piece::Cut(b) => {
            let mut t = String::from_utf8_lossy(b)
                .trim_end_matches(['\n', '\r'])
                .to_string();
            // Replacement characters can make a line longer than LINE_MAX.
            let mut cut = t.len().min(LINE_MAX);
            while !t.is_char_boundary(cut) {
                cut -= 1;
            }
            t.truncate(cut);
            (t, 1)
        }
        Piece::Blank(n) => (String::new(), n),
    };
    if let Some(last) = model.last_mut() {
        if text.is_empty() && last.2.is_empty() && last.0 == inst && last.1 == src {
            last.3 += n;
            return;
        }
    }
    model.push((inst, src, text, n));
}

fn kept(r: &LogRing) -> Vec<(u64, Source, String, u64)> {
    r.lines()
        .into_iter()
        .map(|l: Line| (l.instance, l.source, l.text.to_string(), l.repeat))
        .collect()
}

/// The accounting adds up, and each ring keeps the newest entries it was
/// given, unchanged.
fn check_rings(
    store: &LogStore,
    rings: &[LogRing; 2],
    models: &[Vec<(u64, Source, String, u64)>; 2],
) {
    let mut total = 0;
    for r in rings {
        let sum: usize = r.lines().iter().map(Line::cost).sum();
        assert_eq!(r.bytes(), sum);
        total += sum;
    }
    assert_eq!(store.total(), total);
    for (r, model) in rings.iter().zip(models) {
        let k = kept(r);
        assert!(k.len() <= model.len());
        assert_eq!(k[..], model[model.len() - k.len()..]);
        if !model.is_empty() {
            assert!(!k.is_empty(), "the newest line is never evicted");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // Budgets that always hold one longest line per ring and two in all,
    // small enough for both kinds of eviction to happen.
    let line_cost = LINE_OVERHEAD + LINE_MAX;
    let ring_max = line_cost + data[0] as usize * 64;
    let total_max = 2 * line_cost + (data[1] as usize * 64).min(2 * ring_max);
    let store = LogStore::new(ring_max, total_max);
    let rings = [store.ring(), store.ring()];
    // Stream -> (ring, instance, source).
    let streams = [
        (0, 1, Source::Console),
        (0, 1, Source::Tender),
        (1, 2, Source::Console),
    ];
    let mut splitters: [LineSplitter; 3] = Default::default();
    let mut fed: [Vec<u8>; 3] = Default::default();
    let mut rebuilt: [Vec<u8>; 3] = Default::default();
    let mut models: [Vec<(u64, Source, String, u64)>; 2] = Default::default();

    let mut rest = &data[2..];
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let (sel, mut len) = ((op >> 6) as usize, (op & 0x3f) as usize);
        let (stream, finish) = if sel == 3 {
            (len % 3, true)
        } else {
            (sel, false)
        };
        let chunk: &[u8] = if finish {
            &[]
        } else {
            if len == 0x3f && rest.len() >= 2 {
                len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
                rest = &rest[2..];
            }
            let (c, t) = rest.split_at(len.min(rest.len()));
            rest = t;
            c
        };
        fed[stream].extend_from_slice(chunk);
        let (ri, inst, src) = streams[stream];
        let ring = &rings[ri];
        let mut on_piece = |p: Piece<'_>| {
            match p {
                Piece::Line(b) => {
                    assert!(b.len() <= LINE_MAX && !b.contains(&b'\n'));
                    rebuilt[stream].extend_from_slice(b);
                    rebuilt[stream].push(b'\n');
                }
                Piece::Cut(b) => {
                    assert!(!b.is_empty() && b.len() <= LINE_MAX && !b.contains(&b'\n'));
                    rebuilt[stream].extend_from_slice(b);
                }
                Piece::Blank(n) => {
                    assert!(n > 0);
                    rebuilt[stream].extend(std::iter::repeat_n(b'\n', n as usize));
                }
            }
            expect(&mut models[ri], inst, src, p);
            ring.push_piece(inst, src, p);
            // The budgets after every push.
            for r in &rings {
                assert!(r.bytes() <= ring_max, "ring {} > {ring_max}", r.bytes());
            }
            assert!(
                store.total() <= total_max,
                "total {} > {total_max}",
                store.total()
            );
        };
        if finish {
            splitters[stream].finish(&mut on_piece);
            // Everything fed has come out.
            assert_eq!(rebuilt[stream], fed[stream]);
        } else {
            splitters[stream].feed(chunk, &mut on_piece);
        }
        if finish {
            check_rings(&store, &rings, &models);
        }
        // A ring never holds more lines than its budget pays for, so the
        // model need not remember more.
        for m in &mut models {
            let keep = ring_max / LINE_OVERHEAD + 1;
            if m.len() > 2 * keep {
                m.drain(..m.len() - keep);
            }
        }
    }
    check_rings(&store, &rings, &models);
    for (s, split) in splitters.iter_mut().enumerate() {
        split.finish(|p| {
            if let Piece::Cut(b) = p {
                rebuilt[s].extend_from_slice(b);
            }
        });
        assert_eq!(rebuilt[s], fed[s]);
    }
});
