//! What idle links cost: resident memory, and CPU while nothing happens (no
//! busy polling). A test binary of its own, one test, so that no other
//! test's allocations or work blur the figures.

mod guest;

use std::os::unix::net::UnixDatagram as StdDatagram;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use kiln_peer::{LinkConfig, LinkEnd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// CPU time of this process (user + system), in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which ends with the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line (1-based).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_links_cost_little_memory_and_no_cpu() {
    const LINKS: usize = 400;
    // Warm up the runtime, the allocator and the per-thread buffers.
    let mut keep = Vec::new();
    for _ in 0..8 {
        let (host, guest) = StdDatagram::pair().unwrap();
        keep.push((
            kiln_peer::spawn(host, LinkConfig::default()).unwrap(),
            guest,
        ));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    let before = rss();
    let mut links = Vec::new();
    for _ in 0..LINKS {
        let (host, guest) = StdDatagram::pair().unwrap();
        links.push((
            kiln_peer::spawn(host, LinkConfig::default()).unwrap(),
            guest,
        ));
    }
    // Let every task run once (register with the reactor, arm nothing).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss();
    let per_link = after.saturating_sub(before) / LINKS as u64;
    println!(
        "idle link: {per_link} bytes resident each ({LINKS} links, {} KiB in all)",
        after.saturating_sub(before) / 1024
    );
    assert!(per_link < 32 * 1024, "an idle link costs {per_link} bytes");

    // Plus one link with an established connection that goes quiet.
    let (host, guest_end) = StdDatagram::pair().unwrap();
    let (_guest, _) = guest::spawn(guest_end, guest::Server::Echo);
    let (peer, _task) = kiln_peer::spawn(host, LinkConfig::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    peer.splice(accepted.unwrap().0).unwrap();
    let mut client = client.unwrap();
    client.write_all(b"hi").await.unwrap();
    let mut two = [0u8; 2];
    client.read_exact(&mut two).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let ticks = cpu_ticks();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks() - ticks;
    println!(
        "{} idle links and one idle connection: {spent} CPU ticks in 2 s",
        LINKS + 8
    );
    // A link that polled without cause would burn a core for the 2 s (~200
    // ticks at 100 Hz).
    assert!(spent < 40, "idle links spent {spent} CPU ticks in 2 s");
    assert_eq!(peer.counters().connections_failed.load(Relaxed), 0);

    for ((peer, _), _) in &links {
        peer.close();
    }
    for ((_, task), _) in links {
        assert!(matches!(task.await.unwrap(), LinkEnd::Closed));
    }
}
