//! Unit tests that look inside a running link, against the guest double of
//! the integration tests.

#[path = "../tests/guest/mod.rs"]
mod guest;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::link::Footprint;
use crate::{Command, LinkConfig, PeerHandle};

async fn footprint(peer: &PeerHandle) -> Footprint {
    let (reply, answer) = tokio::sync::oneshot::channel();
    peer.commands.send(Command::Probe(reply)).unwrap();
    answer.await.unwrap()
}

/// Connection buffers exist only while connections do.
#[tokio::test]
async fn connection_state_is_given_back_when_connections_end() {
    let (host, guest_end) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let (_guest, _) = guest::spawn(guest_end, guest::Server::Echo);
    let (peer, _link) = crate::spawn(host, LinkConfig::default()).unwrap();
    let idle = Footprint {
        sockets: 0,
        splices: 0,
        queued_frames: false,
    };
    assert_eq!(footprint(&peer).await, idle);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut clients = Vec::new();
    for _ in 0..10 {
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        peer.splice(accepted.unwrap().0).unwrap();
        clients.push(client.unwrap());
    }
    for client in &mut clients {
        client.write_all(b"abc").await.unwrap();
        let mut back = [0u8; 3];
        client.read_exact(&mut back).await.unwrap();
    }
    let busy = footprint(&peer).await;
    assert_eq!(busy.sockets, 10);
    for mut client in clients {
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
    }
    let mut active = peer.active();
    tokio::time::timeout(Duration::from_secs(5), active.wait_for(|n| *n == 0))
        .await
        .unwrap()
        .unwrap();
    // The last connection lingers until the guest has acknowledged our FIN.
    tokio::time::timeout(Duration::from_secs(5), async {
        while footprint(&peer).await != idle {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("connection state kept after every connection ended");
}
