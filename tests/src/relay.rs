//! A UDP relay standing in for the WAN between two datacenters' connectors: it forwards
//! datagrams to one address and the answers back, and can add a one-way delay, drop a
//! share of the packets, or cut the link altogether. (This machine's kernel has no
//! `netem`; a relay works everywhere and needs no privileges.)
//!
//! One [`Wan`] holds the faults; each [`Relay`] forwards to one connector and obeys them,
//! so cutting the `Wan` cuts both directions of a datacenter pair at once. A
//! [`crate::tcp_relay::TcpRelay`] obeys the same faults for TCP (Redis replication, for
//! the benchmarks), and `opencluster-relay` runs either from a shell.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The faults of a WAN link, shared by the relays of both directions.
#[derive(Default)]
pub struct Wan {
    cut: AtomicBool,
    /// One-way delay in microseconds.
    delay_us: AtomicU64,
    /// Share of packets dropped, in parts per million.
    loss_ppm: AtomicU32,
    /// Packets dropped (cut or loss) and forwarded.
    pub dropped: AtomicU64,
    pub forwarded: AtomicU64,
    /// Bytes forwarded toward the target, and back from it (payloads: UDP datagrams or
    /// the TCP stream, without IP and UDP/TCP headers).
    pub bytes_to_target: AtomicU64,
    pub bytes_back: AtomicU64,
}

impl Wan {
    pub fn new() -> Arc<Wan> {
        Arc::new(Wan::default())
    }

    /// Drops every packet until [`Wan::heal`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    pub fn set_delay(&self, one_way: Duration) {
        self.delay_us.store(one_way.as_micros() as u64, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::SeqCst))
    }

    /// The counters as one line of JSON.
    pub fn stats_json(&self) -> String {
        format!(
            "{{\"cut\":{},\"forwarded\":{},\"dropped\":{},\"bytes_to_target\":{},\"bytes_back\":{}}}",
            self.is_cut(),
            self.forwarded.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.bytes_to_target.load(Ordering::Relaxed),
            self.bytes_back.load(Ordering::Relaxed),
        )
    }

    /// Drops this share of packets (0.0 to 1.0).
    pub fn set_loss(&self, share: f64) {
        self.loss_ppm.store((share.clamp(0.0, 1.0) * 1e6) as u32, Ordering::SeqCst);
    }

    fn passes(&self, rng: &mut u64) -> bool {
        if self.cut.load(Ordering::SeqCst) {
            return false;
        }
        let loss = self.loss_ppm.load(Ordering::SeqCst);
        if loss == 0 {
            return true;
        }
        // xorshift: enough randomness to spread losses, no dependency.
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        (*rng % 1_000_000) as u32 >= loss
    }
}

/// A packet waiting out the delay: when it is due, the socket to send it from, where to.
type Delayed = (Instant, Arc<UdpSocket>, SocketAddr, Vec<u8>);

/// Packets waiting out the delay, in the order they are due (the delay is the same for all).
struct DelayLine {
    queue: Mutex<VecDeque<Delayed>>,
    ready: Condvar,
}

/// Forwards datagrams sent to [`Relay::addr`] on to `target`, and the answers back.
pub struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

const POLL: Duration = Duration::from_millis(50);

impl Relay {
    pub fn start(target: SocketAddr, wan: Arc<Wan>) -> Relay {
        Relay::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), target, wan).expect("bind relay")
    }

    /// A relay listening on `listen` (port 0: any free port).
    pub fn start_on(listen: SocketAddr, target: SocketAddr, wan: Arc<Wan>) -> std::io::Result<Relay> {
        let front = Arc::new(UdpSocket::bind(listen)?);
        front.set_read_timeout(Some(POLL)).expect("timeout");
        let addr = front.local_addr().expect("relay addr");
        let stop = Arc::new(AtomicBool::new(false));
        let line = Arc::new(DelayLine { queue: Mutex::new(VecDeque::new()), ready: Condvar::new() });
        let mut threads = Vec::new();
        {
            let (line, stop) = (line.clone(), stop.clone());
            threads.push(std::thread::spawn(move || deliver(&line, &stop)));
        }
        let (stop2, line2) = (stop.clone(), line.clone());
        threads.push(std::thread::spawn(move || {
            // One upstream socket per client address, so answers find their way back; each
            // has a thread carrying answers back, joined here once the relay stops.
            let mut back_threads: Vec<JoinHandle<()>> = Vec::new();
            let mut upstream: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::SeqCst) {
                let (n, from) = match front.recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(_) => continue,
                };
                let up = upstream.entry(from).or_insert_with(|| {
                    let up = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind upstream"));
                    up.set_read_timeout(Some(POLL)).expect("timeout");
                    let (up2, front2, wan2, line3, stop3) =
                        (up.clone(), front.clone(), wan.clone(), line2.clone(), stop2.clone());
                    let handle = std::thread::spawn(move || {
                        let mut rng = 0x2545_f491_4f6c_dd1du64 ^ u64::from(from.port());
                        let mut buf = vec![0u8; 65536];
                        while !stop3.load(Ordering::SeqCst) {
                            if let Ok((n, _)) = up2.recv_from(&mut buf) {
                                send(&wan2, &line3, &mut rng, front2.clone(), from, &buf[..n], false);
                            }
                        }
                    });
                    back_threads.push(handle);
                    up
                });
                send(&wan, &line2, &mut rng, up.clone(), target, &buf[..n], true);
            }
            for h in back_threads {
                let _ = h.join();
            }
        }));
        Ok(Relay { addr, stop, threads })
    }

    /// Where the connector on the other side of the WAN is dialled.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn send(
    wan: &Wan,
    line: &DelayLine,
    rng: &mut u64,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    bytes: &[u8],
    to_target: bool,
) {
    if !wan.passes(rng) {
        wan.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    wan.forwarded.fetch_add(1, Ordering::Relaxed);
    let counter = if to_target { &wan.bytes_to_target } else { &wan.bytes_back };
    counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    let delay = Duration::from_micros(wan.delay_us.load(Ordering::SeqCst));
    if delay.is_zero() {
        if let Err(e) = socket.send_to(bytes, to) {
            eprintln!("relay: send to {to}: {e}");
        }
        return;
    }
    line.queue.lock().unwrap().push_back((Instant::now() + delay, socket, to, bytes.to_vec()));
    line.ready.notify_one();
}

fn deliver(line: &DelayLine, stop: &AtomicBool) {
    let mut queue = line.queue.lock().unwrap();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        match queue.front() {
            Some((due, ..)) if *due <= now => {
                let (_, socket, to, bytes) = queue.pop_front().expect("front exists");
                drop(queue);
                if let Err(e) = socket.send_to(&bytes, to) {
                    eprintln!("relay: send to {to}: {e}");
                }
                queue = line.queue.lock().unwrap();
            }
            Some((due, ..)) => {
                let wait = (*due - now).min(POLL);
                queue = line.ready.wait_timeout(queue, wait).unwrap().0;
            }
            None => queue = line.ready.wait_timeout(queue, POLL).unwrap().0,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
