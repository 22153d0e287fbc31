//! Ethernet frames on a byte stream, each prefixed by its length as a 32-bit
//! big-endian word (the framing of passt's `--fd` socket and of qemu's
//! "stream" netdev).
//!
//! Both directions are pure state machines over preallocated buffers: the
//! caller moves bytes between them and the socket, so they are tested
//! without any I/O, and nothing here allocates after construction.
//!
//! A length word is trusted only as far as it can be: a frame longer than
//! the device accepts, or shorter than an Ethernet header, is skipped whole
//! (the stream stays in step); a length that no peer could mean
//! ([`LENGTH_LIMIT`]) says the stream is out of step, which cannot be
//! repaired, so the decoder stops with [`StreamError`] and stays stopped.

/// Bytes of the length prefix.
pub const HEADER: usize = 4;

/// Shortest frame delivered: an Ethernet header.
pub const FRAME_MIN: usize = 14;

/// Largest length word taken as a frame at all. passt sends at most
/// 65520 + 14 bytes and qemu at most 69632; anything above is garbage.
pub const LENGTH_LIMIT: u32 = 69_632;

/// The byte stream can no longer be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// A length word above [`LENGTH_LIMIT`].
    #[error("the peer sent a frame length of {0} bytes (limit {LENGTH_LIMIT}): the stream is out of step")]
    BadLength(u32),
}

/// Splits a received byte stream into frames.
#[derive(Debug)]
pub struct Decoder {
    buf: Box<[u8]>,
    /// First unconsumed byte.
    start: usize,
    /// End of the received bytes.
    end: usize,
    /// Bytes of a skipped frame still to discard.
    skip: u64,
    /// Largest frame delivered; longer ones are skipped.
    max_frame: usize,
    /// Set once the stream is out of step.
    broken: Option<StreamError>,
    /// Frames skipped for their length.
    skipped: u64,
}

impl Decoder {
    /// A decoder delivering frames of up to `max_frame` bytes, reading
    /// through a buffer of `capacity` bytes (raised to hold one such frame
    /// with its header).
    pub fn new(max_frame: usize, capacity: usize) -> Self {
        let capacity = capacity.max(HEADER + max_frame);
        Decoder {
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
            skip: 0,
            max_frame,
            broken: None,
            skipped: 0,
        }
    }

    /// Where the next bytes from the stream go (never empty unless the
    /// decoder is broken or holds complete frames filling it). Unconsumed
    /// bytes are moved to the front first.
    pub fn space(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written at the start of [`Self::space`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Frames skipped because of their length so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Consumes skipped bytes and short or long frames at the front, then
    /// says whether a whole frame is waiting. `Err` once the stream is out
    /// of step.
    pub fn has_frame(&mut self) -> Result<bool, StreamError> {
        Ok(self.front()?.is_some())
    }

    /// Length of the whole frame at the front, if one is there (after
    /// discarding what must be discarded).
    pub fn peek_len(&mut self) -> Result<Option<usize>, StreamError> {
        self.front()
    }

    /// Drops the whole frame at the front, if one is there.
    pub fn discard(&mut self) {
        if let Ok(Some(len)) = self.front() {
            self.start += HEADER + len;
        }
    }

    /// The next whole frame, consumed; `Ok(None)` when more bytes are
    /// needed. The slice stays valid until the decoder is used again.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, StreamError> {
        match self.front()? {
            Some(len) => {
                let at = self.start + HEADER;
                self.start = at + len;
                Ok(Some(&self.buf[at..at + len]))
            }
            None => Ok(None),
        }
    }

    /// Length of the whole frame at the front, after discarding what must
    /// be discarded.
    fn front(&mut self) -> Result<Option<usize>, StreamError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        loop {
            if self.skip > 0 {
                let n = self.skip.min((self.end - self.start) as u64);
                self.start += n as usize;
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            let avail = self.end - self.start;
            if avail < HEADER {
                return Ok(None);
            }
            let mut word = [0u8; HEADER];
            word.copy_from_slice(&self.buf[self.start..self.start + HEADER]);
            let len = u32::from_be_bytes(word);
            if len > LENGTH_LIMIT {
                let e = StreamError::BadLength(len);
                self.broken = Some(e);
                return Err(e);
            }
            let len = len as usize;
            if !(FRAME_MIN..=self.max_frame).contains(&len) {
                self.start += HEADER;
                self.skip = len as u64;
                self.skipped += 1;
                continue;
            }
            return Ok((avail >= HEADER + len).then_some(len));
        }
    }
}

/// The frame does not fit the encoder's buffer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Queues frames to send, each with its length prefix, so that a frame cut
/// by a short write is finished before the next one starts.
#[derive(Debug)]
pub struct Encoder {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Encoder {
    /// An encoder holding up to `capacity` bytes of frames and headers.
    pub fn new(capacity: usize) -> Self {
        Encoder {
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// The most bytes it holds (and so the most [`Self::pending`] returns).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Appends `frame` with its length prefix, or refuses it whole.
    pub fn push(&mut self, frame: &[u8]) -> Result<(), Full> {
        let need = HEADER + frame.len();
        let Ok(len) = u32::try_from(frame.len()) else {
            return Err(Full);
        };
        if self.buf.len() - self.end < need {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < need {
                return Err(Full);
            }
        }
        self.buf[self.end..self.end + HEADER].copy_from_slice(&len.to_be_bytes());
        self.buf[self.end + HEADER..self.end + need].copy_from_slice(frame);
        self.end += need;
        Ok(())
    }

    /// The bytes waiting to be written.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Records that the first `n` pending bytes were written.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in frames {
            v.extend_from_slice(&(f.len() as u32).to_be_bytes());
            v.extend_from_slice(f);
        }
        v
    }

    fn feed(d: &mut Decoder, bytes: &[u8]) {
        let space = d.space();
        space[..bytes.len()].copy_from_slice(bytes);
        d.filled(bytes.len());
    }

    fn drain(d: &mut Decoder) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(f) = d.next_frame().unwrap() {
            out.push(f.to_vec());
        }
        out
    }

    #[test]
    fn several_frames_in_one_read() {
        let a = [1u8; 14];
        let b = [2u8; 60];
        let c = [3u8; 1514];
        let mut d = Decoder::new(1514, 8192);
        feed(&mut d, &framed(&[&a, &b, &c]));
        assert!(d.has_frame().unwrap());
        assert_eq!(drain(&mut d), vec![a.to_vec(), b.to_vec(), c.to_vec()]);
        assert!(!d.has_frame().unwrap());
    }

    #[test]
    fn byte_by_byte_reads_reassemble() {
        let frames: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 14 + i as usize * 70]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        let stream = framed(&refs);
        let mut d = Decoder::new(1514, 1518);
        let mut got = Vec::new();
        for &byte in &stream {
            feed(&mut d, &[byte]);
            got.extend(drain(&mut d));
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn a_whole_frame_always_fits_after_compaction() {
        // Capacity exactly one maximal frame: a partial frame left at the
        // end of the buffer must move to the front.
        let mut d = Decoder::new(100, 0);
        let small = [7u8; 20];
        let big = [8u8; 100];
        let s = framed(&[&small, &big]);
        feed(&mut d, &s[..HEADER + 20 + 50]);
        assert_eq!(drain(&mut d), vec![small.to_vec()]);
        assert!(d.space().len() >= s.len() - (HEADER + 20 + 50));
        feed(&mut d, &s[HEADER + 20 + 50..]);
        assert_eq!(drain(&mut d), vec![big.to_vec()]);
    }

    #[test]
    fn long_and_short_frames_are_skipped_and_the_stream_stays_in_step() {
        let long = vec![9u8; 9000];
        let runt = [5u8; 3];
        let good = [6u8; 64];
        let s = framed(&[&long, &runt, &[], &good]);
        let mut d = Decoder::new(1514, 2048);
        let mut got = Vec::new();
        for chunk in s.chunks(700) {
            feed(&mut d, chunk);
            got.extend(drain(&mut d));
        }
        assert_eq!(got, vec![good.to_vec()]);
        assert_eq!(d.skipped(), 3);
    }

    #[test]
    fn garbage_lengths_stop_the_decoder_for_good() {
        let mut d = Decoder::new(1514, 2048);
        let good = [1u8; 20];
        let mut s = framed(&[&good]);
        s.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        feed(&mut d, &s);
        assert_eq!(d.next_frame().unwrap(), Some(&good[..]));
        assert_eq!(d.next_frame(), Err(StreamError::BadLength(u32::MAX)));
        assert_eq!(d.has_frame(), Err(StreamError::BadLength(u32::MAX)));
        let over = LENGTH_LIMIT + 1;
        let mut d = Decoder::new(1514, 2048);
        feed(&mut d, &over.to_be_bytes());
        assert_eq!(d.next_frame(), Err(StreamError::BadLength(over)));
        // The limit itself is still a (skipped) frame.
        let mut d = Decoder::new(1514, 2048);
        feed(&mut d, &LENGTH_LIMIT.to_be_bytes());
        assert_eq!(d.next_frame(), Ok(None));
    }

    #[test]
    fn random_chunking_never_panics_and_finds_the_frames() {
        // A small deterministic generator (no dependency).
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let frames: Vec<Vec<u8>> = (0..200)
            .map(|i| vec![i as u8; 14 + (rand() % 1501) as usize])
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        let s = framed(&refs);
        let mut d = Decoder::new(1514, 4096);
        let (mut at, mut got) = (0, Vec::new());
        while at < s.len() {
            let room = d.space().len();
            let n = ((rand() % 3000) as usize + 1).min(room).min(s.len() - at);
            feed(&mut d, &s[at..at + n]);
            at += n;
            got.extend(drain(&mut d));
        }
        assert_eq!(got, frames);

        // Pure noise: either frames, skips or a clean error, never a panic.
        for _ in 0..200 {
            let mut d = Decoder::new(1514, 2048);
            for _ in 0..20 {
                let noise: Vec<u8> = (0..(rand() % 600)).map(|_| rand() as u8).collect();
                let room = d.space().len();
                feed(&mut d, &noise[..noise.len().min(room)]);
                while let Ok(Some(f)) = d.next_frame() {
                    assert!((FRAME_MIN..=1514).contains(&f.len()));
                }
            }
        }
    }

    #[test]
    fn encoder_prefixes_and_survives_short_writes() {
        let mut e = Encoder::new(64);
        e.push(&[1, 2, 3]).unwrap();
        e.push(&[4; 10]).unwrap();
        assert_eq!(&e.pending()[..7], &[0, 0, 0, 3, 1, 2, 3]);
        e.consume(5);
        assert_eq!(e.pending().len(), 2 + 14);
        // No room for 50 + 4 bytes behind 16 pending ones until compaction,
        // and none at all for 61 + 4.
        assert_eq!(e.push(&[5; 61]), Err(Full));
        e.push(&[5; 44]).unwrap();
        assert_eq!(e.pending().len(), 64);
        e.consume(64);
        assert!(e.pending().is_empty());
        e.push(&[6; 60]).unwrap();
        // The encoded stream decodes back.
        let mut d = Decoder::new(1514, 0);
        let p = e.pending().to_vec();
        feed(&mut d, &p);
        assert_eq!(d.next_frame().unwrap(), Some(&[6u8; 60][..]));
    }
}
