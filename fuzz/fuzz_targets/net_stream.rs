//! passt's byte stream, as a hostile or broken peer could send it: the
//! fuzzer chooses the bytes, how many arrive before each read, how many one
//! `read` returns, when the peer closes, and the order in which the guest
//! reads frames (NET_READ with any buffer size), polls (any `revents`) and
//! sends (any frame length, into a peer that takes any number of bytes per
//! write). It drives the real [`NetDevice`] with stream framing (the
//! decoder and encoder of `kiln_tender::net::stream` behind it) through a
//! fake port.
//!
//! Properties, checked against a plain reading of the whole stream:
//! * frames come out whole and in order, each exactly the bytes the stream
//!   held; a frame is left out only when it is not a frame (a length
//!   outside 14..=MTU+14) or longer than the guest's buffer;
//! * a length word above the limit takes the device down with that word,
//!   after every frame before it; a device goes down as closed only when
//!   the peer really closed, never because it read into no room;
//! * the device holds at most its read buffer of what the peer sent, and at
//!   most its write queue of what the guest sent;
//! * what the guest sent leaves as length-prefixed frames, in order;
//! * and nothing panics.
#![no_main]

use kiln_tender::net::stream::{StreamError, HEADER, LENGTH_LIMIT};
use kiln_tender::net::{
    Down, Framing, NetDevice, Port, Sent, MTU, STREAM_READ_BUF, STREAM_WRITE_BUF,
};
use libfuzzer_sys::fuzz_target;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

const FRAME_MAX: usize = MTU as usize + 14;

/// The peer, shared between the port and the harness.
#[derive(Debug, Default)]
struct Peer {
    stream: Vec<u8>,
    /// Bytes of `stream` that have arrived.
    available: usize,
    /// Bytes of `stream` the device has read.
    read: usize,
    /// Most bytes one read returns (at least 1).
    read_limit: usize,
    /// The peer closed after `available` bytes.
    closed: bool,
    /// Bytes the device wrote.
    written: Vec<u8>,
    /// Bytes the next writes may take (`None`: any number).
    room: Option<usize>,
}

#[derive(Debug, Clone)]
struct FakePort(Arc<Mutex<Peer>>);

impl Port for FakePort {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut p = self.0.lock().unwrap();
        // A read into no room returns 0, which is end of file: the device
        // must never ask for one.
        assert!(!buf.is_empty(), "the device read into an empty buffer");
        if p.read < p.available {
            let n = buf.len().min(p.read_limit).min(p.available - p.read);
            let at = p.read;
            buf[..n].copy_from_slice(&p.stream[at..at + n]);
            p.read += n;
            Ok(n)
        } else if p.closed {
            Ok(0)
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut p = self.0.lock().unwrap();
        let n = match p.room {
            Some(0) => return Err(io::ErrorKind::WouldBlock.into()),
            Some(r) => r.min(buf.len()),
            None => buf.len(),
        };
        if let Some(r) = p.room.as_mut() {
            *r -= n;
        }
        p.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn fd(&self) -> Option<RawFd> {
        None
    }
}

/// One frame of the stream: where its bytes start, its length, and how
/// many length words before it were not frames (skipped by the decoder).
#[derive(Clone, Copy)]
struct Frame {
    start: usize,
    len: usize,
    skips_before: u64,
}

/// Where the stream breaks: the offset of the bad length word, the word,
/// and how many length words before it were not frames.
#[derive(Clone, Copy)]
struct Break {
    at: usize,
    word: u32,
    skips_before: u64,
}

/// The stream read plainly, as a whole.
fn reference(stream: &[u8]) -> (Vec<Frame>, Option<Break>) {
    let mut frames = Vec::new();
    let mut skips = 0;
    let mut at = 0usize;
    while at + HEADER <= stream.len() {
        let word = u32::from_be_bytes(stream[at..at + HEADER].try_into().unwrap());
        if word > LENGTH_LIMIT {
            let b = Break {
                at,
                word,
                skips_before: skips,
            };
            return (frames, Some(b));
        }
        let len = word as usize;
        let start = at + HEADER;
        if (14..=FRAME_MAX).contains(&len) {
            if start + len > stream.len() {
                break;
            }
            frames.push(Frame {
                start,
                len,
                skips_before: skips,
            });
        } else {
            skips += 1;
        }
        at = start + len;
    }
    (frames, None)
}

struct Check {
    frames: Vec<Frame>,
    broken: Option<Break>,
    /// Frames delivered so far; the next one is not before frame `next`.
    delivered: u64,
    next: usize,
    /// The smallest guest buffer since the last delivered frame: only
    /// frames longer than it may have been dropped.
    min_cap: usize,
    nval: bool,
}

impl Check {
    /// Frames dropped for their length and length words skipped are
    /// counted in `rx_dropped`; the decoder has passed exactly the skipped
    /// words before the frame at its front. So `rx_dropped` says which
    /// frame came out: the one after `rx_dropped - skips_before` dropped
    /// frames. It must hold the bytes that came out, and the frames passed
    /// over must have been too long for the guest.
    fn delivered(&mut self, got: &[u8], cap: usize, rx_dropped: u64, peer: &Peer) {
        let j = (self.next..self.frames.len())
            .find(|&j| {
                let f = self.frames[j];
                f.skips_before + (j as u64 - self.delivered) == rx_dropped
            })
            .unwrap_or_else(|| {
                panic!(
                    "a frame of {} bytes the stream does not hold there",
                    got.len()
                )
            });
        let f = self.frames[j];
        assert!(
            f.len <= cap,
            "a frame of {} bytes into a buffer of {cap}",
            f.len
        );
        assert!(
            &peer.stream[f.start..f.start + f.len] == got,
            "frame {j} came out garbled"
        );
        for (i, lost) in self.frames[self.next..j].iter().enumerate() {
            assert!(
                lost.len > self.min_cap,
                "frame {} ({} bytes) was lost with guest buffers of {} bytes",
                self.next + i,
                lost.len,
                self.min_cap
            );
        }
        // Everything read after this frame is all the device holds.
        let held = peer.read - (f.start + f.len);
        assert!(held <= STREAM_READ_BUF, "{held} bytes held");
        self.next = j + 1;
        self.delivered += 1;
        self.min_cap = FRAME_MAX;
    }

    /// Frames not delivered may only have been dropped as too long.
    fn rest_dropped(&self) {
        for f in &self.frames[self.next.min(self.frames.len())..] {
            assert!(f.len > self.min_cap, "a frame of {} bytes was lost", f.len);
        }
    }

    /// The device went down: for a reason the peer gave.
    fn down(&self, why: Down, rx_dropped: u64, peer: &Peer) {
        match why {
            Down::Stream(StreamError::BadLength(w)) => {
                let Some(b) = self.broken else {
                    panic!("down for a length word of {w} the stream does not hold");
                };
                assert_eq!(w, b.word);
                assert!(peer.read >= b.at + HEADER, "down before the word was read");
                // Every frame before the word was delivered or dropped.
                assert_eq!(
                    rx_dropped,
                    b.skips_before + self.frames.len() as u64 - self.delivered
                );
                self.rest_dropped();
            }
            Down::Closed => assert!(
                peer.closed && peer.read == peer.available,
                "down as closed with {} of {} bytes unread (closed: {})",
                peer.available - peer.read,
                peer.available,
                peer.closed
            ),
            Down::Io(e) => assert!(self.nval && e == libc::EBADF, "down for errno {e}"),
        }
    }

    /// The device says a frame is buffered: a whole one has been read.
    fn buffered(&self, peer: &Peer) {
        assert!(
            self.frames[self.next.min(self.frames.len())..]
                .iter()
                .any(|f| f.start + f.len <= peer.read),
            "a buffered frame that has not been read whole"
        );
    }
}

fn framed(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    for f in frames {
        v.extend_from_slice(&(f.len() as u32).to_be_bytes());
        v.extend_from_slice(f);
    }
    v
}

fuzz_target!(|data: &[u8]| {
    // Input: op count, repeat count, ops (3 bytes each), stream bytes. The
    // peer sends the stream bytes `repeat` times over, so that a small
    // input can fill the device's 64 KiB read buffer.
    let [count, repeat, rest @ ..] = data else {
        return;
    };
    let nops = (*count as usize).min(rest.len() / 3);
    let (ops, bytes) = rest.split_at(nops * 3);
    let stream = bytes.repeat(1 + *repeat as usize % 64);
    let stream = &stream[..];
    let peer = Arc::new(Mutex::new(Peer {
        stream: stream.to_vec(),
        read_limit: usize::MAX,
        ..Peer::default()
    }));
    let mut dev = NetDevice::new(
        *b"user0\0\0\0\0\0\0\0\0\0\0\0",
        Some(Box::new(FakePort(peer.clone()))),
        Framing::stream(FRAME_MAX),
        FRAME_MAX,
    );
    let (frames, broken) = reference(stream);
    let mut check = Check {
        frames,
        broken,
        delivered: 0,
        next: 0,
        min_cap: FRAME_MAX,
        nval: false,
    };
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut was_down = None;
    // Bytes of `sent` with their length words.
    let mut sent_bytes = 0usize;

    for (i, op) in ops.chunks(3).enumerate() {
        let p = u16::from_le_bytes([op[1], op[2]]) as usize;
        match op[0] % 8 {
            // Bytes arrive.
            0 => {
                let mut pe = peer.lock().unwrap();
                pe.available = (pe.available + p).min(pe.stream.len());
            }
            1 => peer.lock().unwrap().read_limit = p.max(1),
            // NET_READ with a buffer of `p` bytes (0: the largest frame).
            2 => {
                let cap = if p == 0 { FRAME_MAX } else { p };
                check.min_cap = check.min_cap.min(cap);
                match dev.recv(cap, <[u8]>::to_vec) {
                    Ok(Some(f)) => {
                        let dropped = dev.stats().rx_dropped;
                        check.delivered(&f, cap, dropped, &peer.lock().unwrap());
                    }
                    Ok(None) => {}
                    Err(why) => assert_eq!(dev.down(), Some(why)),
                }
            }
            // POLL woke with these events.
            3 => {
                let revents = (p as libc::c_short)
                    & (libc::POLLIN
                        | libc::POLLOUT
                        | libc::POLLHUP
                        | libc::POLLERR
                        | libc::POLLNVAL);
                check.nval |= revents & libc::POLLNVAL != 0;
                if dev.on_poll(revents) {
                    check.buffered(&peer.lock().unwrap());
                }
            }
            4 => {
                if dev.has_buffered_frame() {
                    check.buffered(&peer.lock().unwrap());
                }
            }
            // NET_WRITE of a frame of `p % 2048` bytes.
            5 => {
                let len = p % 2048;
                let fill = i as u8;
                match dev.tx_buffer(len) {
                    None => assert!(!(14..=FRAME_MAX).contains(&len)),
                    Some(buf) => {
                        assert_eq!(buf.len(), len);
                        buf.fill(fill);
                        match dev.send(len) {
                            Sent::Ok => {
                                sent.push(vec![fill; len]);
                                sent_bytes += HEADER + len;
                            }
                            Sent::Busy => {
                                // Only a full queue refuses a frame.
                                let pe = peer.lock().unwrap();
                                let queued = sent_bytes - pe.written.len();
                                assert!(queued + HEADER + len > STREAM_WRITE_BUF);
                            }
                            Sent::Refused => panic!("a stream refuses no frame"),
                            Sent::Down => assert!(dev.down().is_some()),
                        }
                    }
                }
            }
            6 => peer.lock().unwrap().room = if p == 0xffff { None } else { Some(p) },
            // The peer closes once everything that arrived is read.
            _ => peer.lock().unwrap().closed = true,
        }
        // However it went down (a read, a poll, a send), it was for a
        // reason the peer gave; checked when it happens.
        if let (None, Some(why)) = (was_down, dev.down()) {
            check.down(why, dev.stats().rx_dropped, &peer.lock().unwrap());
        }
        was_down = dev.down();
        let pe = peer.lock().unwrap();
        // Never more queued than the write buffer holds.
        assert!(pe.written.len() <= sent_bytes);
        assert!(sent_bytes - pe.written.len() <= STREAM_WRITE_BUF);
    }

    // The rest of the stream arrives and the peer takes everything: every
    // remaining frame comes out, then the stream ends where it breaks.
    {
        let mut pe = peer.lock().unwrap();
        pe.available = pe.stream.len();
        pe.read_limit = usize::MAX;
        pe.closed = false;
        pe.room = None;
    }
    if dev.down().is_none() {
        loop {
            match dev.recv(FRAME_MAX, <[u8]>::to_vec) {
                Ok(Some(f)) => {
                    let dropped = dev.stats().rx_dropped;
                    check.delivered(&f, FRAME_MAX, dropped, &peer.lock().unwrap());
                }
                Ok(None) => {
                    check.rest_dropped();
                    assert!(check.broken.is_none(), "a bad length word went unnoticed");
                    break;
                }
                Err(why) => {
                    check.down(why, dev.stats().rx_dropped, &peer.lock().unwrap());
                    break;
                }
            }
        }
        dev.on_poll(libc::POLLOUT);
    }
    let stats = dev.stats();
    assert_eq!(stats.rx_frames, check.delivered);
    assert_eq!(stats.tx_frames, sent.len() as u64);
    let pe = peer.lock().unwrap();
    let expect = framed(&sent);
    if dev.down().is_none() {
        assert!(pe.written == expect, "what the guest sent left garbled");
    } else {
        assert!(
            expect.starts_with(&pe.written),
            "what the guest sent left garbled"
        );
    }
});
