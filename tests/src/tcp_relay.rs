//! A TCP relay obeying the same [`Wan`] faults as the UDP [`crate::relay::Relay`], so
//! that a TCP protocol (Redis `replicaof`, in the replication benchmark) crosses the same
//! WAN as the connectors' QUIC.
//!
//! Each accepted connection gets a connection to the target; each direction's bytes are
//! held for the one-way delay before they are written on (a reader thread stamps what it
//! reads, a writer thread writes it when due), so the delay adds latency without limiting
//! throughput. TCP does not lose bytes: the loss setting does not apply. A cut resets
//! every connection and refuses new ones until the heal, as a broken WAN would look to
//! both ends after their timeouts. What is read is queued without bound (a test relay:
//! the delay is short and the target keeps up).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::relay::Wan;

/// How often the accept loop looks for new connections and a cut.
const POLL: Duration = Duration::from_millis(2);

/// Forwards connections made to [`TcpRelay::addr`] on to `target`.
pub struct TcpRelay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

/// The live connections (both sockets of each) and their threads.
#[derive(Default)]
struct Live {
    sockets: Vec<(TcpStream, TcpStream)>,
    threads: Vec<JoinHandle<()>>,
}

impl Live {
    fn reset(&mut self) {
        for (a, b) in self.sockets.drain(..) {
            // Already closed by its peer: nothing to do.
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

impl TcpRelay {
    /// A relay listening on `listen` (port 0: any free port).
    pub fn start_on(listen: SocketAddr, target: SocketAddr, wan: Arc<Wan>) -> std::io::Result<TcpRelay> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let accept = std::thread::spawn(move || {
            let mut live = Live::default();
            let mut was_cut = false;
            while !stop2.load(Ordering::SeqCst) {
                let cut = wan.is_cut();
                if cut && !was_cut {
                    live.reset();
                }
                was_cut = cut;
                match listener.accept() {
                    Ok((client, _)) if cut => drop(client),
                    Ok((client, _)) => {
                        if let Err(e) = connect(client, target, &wan, &mut live) {
                            eprintln!("tcp relay: connection to {target}: {e}");
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
                    Err(e) => {
                        eprintln!("tcp relay: accept: {e}");
                        std::thread::sleep(POLL);
                    }
                }
            }
            live.reset();
            for t in live.threads {
                let _ = t.join();
            }
        });
        Ok(TcpRelay { addr, stop, accept: Some(accept) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn connect(client: TcpStream, target: SocketAddr, wan: &Arc<Wan>, live: &mut Live) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let upstream = TcpStream::connect(target)?;
    for s in [&client, &upstream] {
        s.set_nodelay(true)?;
    }
    live.threads.extend(pipe(client.try_clone()?, upstream.try_clone()?, wan.clone(), true));
    live.threads.extend(pipe(upstream.try_clone()?, client.try_clone()?, wan.clone(), false));
    live.sockets.push((client, upstream));
    // Threads of connections that ended are joined as new ones come.
    let (done, running): (Vec<_>, Vec<_>) = live.threads.drain(..).partition(|t| t.is_finished());
    for t in done {
        let _ = t.join();
    }
    live.threads = running;
    Ok(())
}

/// Copies `from` to `to`, each chunk held for the delay; ends at EOF or an error on
/// either side (a reset), closing `to`'s write side.
fn pipe(mut from: TcpStream, mut to: TcpStream, wan: Arc<Wan>, to_target: bool) -> [JoinHandle<()>; 2] {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let wan2 = wan.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + wan2.delay(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` tells the writer the stream ended.
    });
    let writer = std::thread::spawn(move || {
        let counter: &AtomicU64 = if to_target { &wan.bytes_to_target } else { &wan.bytes_back };
        while let Ok((due, bytes)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if wan.is_cut() {
                break;
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
            counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            wan.forwarded.fetch_add(1, Ordering::Relaxed);
        }
        // The other end may be gone already.
        let _ = to.shutdown(Shutdown::Write);
    });
    [reader, writer]
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn round_trip(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<Duration> {
        let started = Instant::now();
        conn.write_all(msg)?;
        let mut back = vec![0u8; msg.len()];
        conn.read_exact(&mut back)?;
        assert_eq!(back, msg);
        Ok(started.elapsed())
    }

    #[test]
    fn a_tcp_relay_delays_both_ways_counts_bytes_and_cuts() {
        let wan = Wan::new();
        wan.set_delay(Duration::from_millis(20));
        let relay = TcpRelay::start_on("127.0.0.1:0".parse().unwrap(), echo_server(), wan.clone()).unwrap();
        let mut conn = TcpStream::connect(relay.addr()).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let rtt = round_trip(&mut conn, b"hello").unwrap();
        assert!(rtt >= Duration::from_millis(40), "round trip {rtt:?} under twice the delay");
        assert!(rtt < Duration::from_secs(2), "round trip {rtt:?}");
        assert_eq!(wan.bytes_to_target.load(Ordering::Relaxed), 5);
        assert_eq!(wan.bytes_back.load(Ordering::Relaxed), 5);

        // A cut resets the connection and refuses new ones until the heal.
        wan.cut();
        let reset = crate::wait_until(Duration::from_secs(5), || round_trip(&mut conn, b"x").is_err());
        assert!(reset, "the connection survived the cut");
        let mut during = TcpStream::connect(relay.addr()).unwrap();
        during.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(round_trip(&mut during, b"y").is_err(), "a connection made during the cut worked");
        wan.heal();
        let mut after = TcpStream::connect(relay.addr()).unwrap();
        after.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        round_trip(&mut after, b"after the heal").unwrap();
    }
}
