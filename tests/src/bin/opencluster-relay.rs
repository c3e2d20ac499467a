//! The test harness's WAN relay as a command, for benchmark scripts: forwards UDP
//! datagrams or TCP connections from `--listen` to `--to` with a one-way delay, packet
//! loss (UDP) and cuts, and reports its byte counters.
//!
//!   opencluster-relay --udp|--tcp --listen 127.0.0.1:7000 --to 127.0.0.1:7948 \
//!       [--delay-ms 20] [--loss 0.01] [--control FILE] [--stats FILE]
//!
//! `--control FILE`: the relay reads it every 20 ms; `cut` in it cuts the link, anything
//! else (`heal`, empty, no file) heals it. `--stats FILE`: rewritten every 100 ms with one
//! line of JSON (`cut`, `forwarded`, `dropped`, `bytes_to_target`, `bytes_back`). It prints
//! `listening on ADDR` once ready and runs until killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use opencluster_tests::relay::{Relay, Wan};
use opencluster_tests::tcp_relay::TcpRelay;

const USAGE: &str = "usage: opencluster-relay --udp|--tcp --listen ADDR --to ADDR [--delay-ms N] [--loss SHARE] [--control FILE] [--stats FILE]";

struct Args {
    tcp: bool,
    listen: SocketAddr,
    to: SocketAddr,
    delay: Duration,
    loss: f64,
    control: Option<PathBuf>,
    stats: Option<PathBuf>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut tcp, mut udp) = (false, false);
    let (mut listen, mut to, mut delay, mut loss, mut control, mut stats) =
        (None, None, 0u64, 0.0, None, None);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let addr = |name: &str, v: String| {
            v.parse::<SocketAddr>().map_err(|_| format!("{name} {v:?} is not an address like 127.0.0.1:7000"))
        };
        match flag.as_str() {
            "--tcp" => tcp = true,
            "--udp" => udp = true,
            "--listen" => listen = Some(addr("--listen", value("--listen")?)?),
            "--to" => to = Some(addr("--to", value("--to")?)?),
            "--delay-ms" => {
                let v = value("--delay-ms")?;
                delay = v
                    .parse()
                    .map_err(|_| format!("--delay-ms {v:?} is not a whole number of milliseconds"))?;
            }
            "--loss" => {
                let v = value("--loss")?;
                loss = v
                    .parse::<f64>()
                    .ok()
                    .filter(|l| (0.0..=1.0).contains(l))
                    .ok_or_else(|| format!("--loss {v:?} is not a share between 0 and 1"))?;
            }
            "--control" => control = Some(PathBuf::from(value("--control")?)),
            "--stats" => stats = Some(PathBuf::from(value("--stats")?)),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if tcp == udp {
        return Err(format!("give one of --udp and --tcp\n{USAGE}"));
    }
    if tcp && loss > 0.0 {
        return Err("--loss applies to --udp only (TCP does not lose bytes)".into());
    }
    Ok(Args {
        tcp,
        listen: listen.ok_or_else(|| format!("--listen is required\n{USAGE}"))?,
        to: to.ok_or_else(|| format!("--to is required\n{USAGE}"))?,
        delay: Duration::from_millis(delay),
        loss,
        control,
        stats,
    })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("opencluster-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let wan = Wan::new();
    wan.set_delay(args.delay);
    wan.set_loss(args.loss);
    // Kept alive until the process is killed.
    let (_udp, _tcp, addr) = if args.tcp {
        match TcpRelay::start_on(args.listen, args.to, wan.clone()) {
            Ok(r) => {
                let a = r.addr();
                (None, Some(r), a)
            }
            Err(e) => {
                eprintln!("opencluster-relay: --listen {}: {e}", args.listen);
                return ExitCode::from(1);
            }
        }
    } else {
        match Relay::start_on(args.listen, args.to, wan.clone()) {
            Ok(r) => {
                let a = r.addr();
                (Some(r), None, a)
            }
            Err(e) => {
                eprintln!("opencluster-relay: --listen {}: {e}", args.listen);
                return ExitCode::from(1);
            }
        }
    };
    println!("listening on {addr}");
    let mut tick = 0u64;
    loop {
        if let Some(c) = &args.control {
            let cut = std::fs::read_to_string(c).is_ok_and(|s| s.trim() == "cut");
            if cut != wan.is_cut() {
                if cut {
                    wan.cut();
                } else {
                    wan.heal();
                }
                println!("{}", if cut { "cut" } else { "healed" });
            }
        }
        if let Some(s) = &args.stats
            && tick.is_multiple_of(5)
        {
            let tmp = s.with_extension("tmp");
            let written =
                std::fs::write(&tmp, wan.stats_json() + "\n").and_then(|_| std::fs::rename(&tmp, s));
            if let Err(e) = written {
                eprintln!("opencluster-relay: --stats {}: {e}", s.display());
            }
        }
        tick += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
}
