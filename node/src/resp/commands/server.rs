//! Server commands: COMMAND, INFO, CONFIG GET, TIME, DBSIZE, FLUSHDB.

use std::fmt::Write as _;

use bytes::Bytes;

use super::{CmdError, CmdResult, Ctx, Flow, upper};
use crate::glob;
use crate::hlc::unix_ms;
use crate::resp::codec;
use crate::resp::table::{COMMANDS, Spec, lookup};
use crate::store::Write;

fn write_command_info(ctx: &mut Ctx<'_>, spec: &Spec) {
    let (out, p) = (&mut *ctx.out, ctx.session.protocol);
    codec::write_array_len(out, 10);
    codec::write_bulk(out, spec.name.as_bytes());
    codec::write_integer(out, i64::from(spec.arity));
    codec::write_set_len(out, p, spec.flags.len());
    for f in spec.flags {
        codec::write_simple(out, f);
    }
    codec::write_integer(out, i64::from(spec.first_key));
    codec::write_integer(out, i64::from(spec.last_key));
    codec::write_integer(out, i64::from(spec.step));
    for _ in 0..4 {
        // ACL categories, tips, key specs, subcommands.
        codec::write_array_len(out, 0);
    }
}

pub(super) fn command(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let Some(sub) = args.get(1) else {
        codec::write_array_len(ctx.out, COMMANDS.len());
        for spec in COMMANDS {
            write_command_info(ctx, spec);
        }
        return Ok(Flow::Continue);
    };
    match upper(sub).as_slice() {
        b"COUNT" => ctx.int(COMMANDS.len() as i64),
        b"INFO" => {
            let specs: Vec<Option<&Spec>> = if args.len() == 2 {
                COMMANDS.iter().map(Some).collect()
            } else {
                args[2..].iter().map(|n| lookup(n).map(|i| &COMMANDS[i])).collect()
            };
            codec::write_array_len(ctx.out, specs.len());
            for spec in specs {
                match spec {
                    Some(spec) => write_command_info(ctx, spec),
                    None => codec::write_null_array(ctx.out, ctx.session.protocol),
                }
            }
            Ok(Flow::Continue)
        }
        b"LIST" => {
            codec::write_array_len(ctx.out, COMMANDS.len());
            for spec in COMMANDS {
                codec::write_bulk(ctx.out, spec.name.as_bytes());
            }
            Ok(Flow::Continue)
        }
        b"DOCS" => {
            let specs: Vec<&Spec> = if args.len() == 2 {
                COMMANDS.iter().collect()
            } else {
                args[2..].iter().filter_map(|n| lookup(n).map(|i| &COMMANDS[i])).collect()
            };
            let p = ctx.session.protocol;
            codec::write_map_len(ctx.out, p, specs.len());
            for spec in specs {
                codec::write_bulk(ctx.out, spec.name.as_bytes());
                codec::write_map_len(ctx.out, p, 3);
                for (field, value) in [("summary", spec.summary), ("since", "1.0.0"), ("group", spec.group)] {
                    codec::write_bulk(ctx.out, field.as_bytes());
                    codec::write_bulk(ctx.out, value.as_bytes());
                }
            }
            Ok(Flow::Continue)
        }
        _ => {
            let sub = String::from_utf8_lossy(sub);
            Err(CmdError::new("syntax", format!("ERR unknown subcommand '{sub}'. Try COMMAND HELP.")))
        }
    }
}

const SECTIONS: &[&str] = &["server", "clients", "memory", "stats", "keyspace"];

pub(super) fn info(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    let wanted: Vec<String> = args[1..].iter().map(|a| String::from_utf8_lossy(a).to_lowercase()).collect();
    let all =
        wanted.is_empty() || wanted.iter().any(|w| matches!(w.as_str(), "all" | "everything" | "default"));
    let mut text = String::new();
    for section in SECTIONS {
        if all || wanted.iter().any(|w| w == section) {
            if !text.is_empty() {
                text.push_str("\r\n");
            }
            info_section(ctx, section, &mut text);
        }
    }
    codec::write_verbatim(ctx.out, ctx.session.protocol, "txt", text.as_bytes());
    Ok(Flow::Continue)
}

fn info_section(ctx: &Ctx<'_>, section: &str, t: &mut String) {
    let s = ctx.state;
    // `write!` to a String cannot fail.
    match section {
        "server" => {
            let uptime = s.started.elapsed().as_secs();
            let _ = write!(
                t,
                "# Server\r\nredis_version:{}\r\nopencluster_version:{}\r\nredis_mode:standalone\r\n\
                 os:{} {}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{uptime}\r\n\
                 uptime_in_days:{}\r\nnode_name:{}\r\ndatacenter:{}\r\n",
                crate::REDIS_COMPAT_VERSION,
                crate::VERSION,
                std::env::consts::OS,
                std::env::consts::ARCH,
                std::process::id(),
                s.tcp_port.unwrap_or(0),
                uptime / 86_400,
                s.node_name,
                s.datacenter,
            );
        }
        "clients" => {
            let _ = write!(
                t,
                "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n",
                s.clients.connected(),
                s.clients.max
            );
        }
        "memory" => {
            let rss = crate::metrics::process_rss_bytes();
            let _ = write!(
                t,
                "# Memory\r\nused_memory:{rss}\r\nused_memory_human:{:.2}M\r\nused_memory_rss:{rss}\r\n\
                 maxmemory:0\r\nstore_cache_bytes:{}\r\n",
                rss as f64 / (1 << 20) as f64,
                s.store_cache_bytes,
            );
        }
        "stats" => {
            let _ = write!(
                t,
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
                 rejected_connections:{}\r\nexpired_keys:{}\r\n",
                s.clients.total(),
                s.commands_processed(),
                s.metrics.rejected_connections.get(),
                s.purge_status.purged.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        "keyspace" => {
            t.push_str("# Keyspace\r\n");
            let stats = s.cluster.stats();
            if stats.keys > 0 {
                let _ = write!(t, "db0:keys={},expires={},avg_ttl=0\r\n", stats.keys, stats.expiring);
            }
        }
        _ => {}
    }
}

pub(super) fn config(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    match upper(&args[1]).as_slice() {
        b"GET" if args.len() >= 3 => {
            let s = ctx.state;
            let params: Vec<(&str, String)> = vec![
                ("maxmemory", "0".into()),
                ("maxclients", s.clients.max.to_string()),
                ("databases", "1".into()),
                ("save", String::new()),
                ("appendonly", "yes".into()),
                ("appendfsync", if s.fsync_always { "always" } else { "everysec" }.into()),
                ("timeout", "0".into()),
                ("port", s.tcp_port.unwrap_or(0).to_string()),
                ("proto-max-bulk-len", s.limits.max_value_bytes.to_string()),
            ];
            let matched: Vec<&(&str, String)> = params
                .iter()
                .filter(|(name, _)| {
                    args[2..].iter().any(|pat| glob::matches(&pat.to_ascii_lowercase(), name.as_bytes()))
                })
                .collect();
            codec::write_map_len(ctx.out, ctx.session.protocol, matched.len());
            for (name, value) in matched {
                codec::write_bulk(ctx.out, name.as_bytes());
                codec::write_bulk(ctx.out, value.as_bytes());
            }
            Ok(Flow::Continue)
        }
        b"GET" => Err(CmdError::arity("config|get")),
        b"SET" => Err(CmdError::new(
            "unsupported",
            "ERR CONFIG SET is not supported: settings come from the node's config file, OPENCLUSTER_* \
             environment variables and flags (see docs/operations.md)",
        )),
        _ => {
            let sub = String::from_utf8_lossy(&args[1]);
            Err(CmdError::new("syntax", format!("ERR unknown subcommand '{sub}'. Try CONFIG HELP.")))
        }
    }
}

pub(super) fn time(ctx: &mut Ctx<'_>) -> CmdResult {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    codec::write_array_len(ctx.out, 2);
    codec::write_bulk(ctx.out, (micros / 1_000_000).to_string().as_bytes());
    codec::write_bulk(ctx.out, (micros % 1_000_000).to_string().as_bytes());
    Ok(Flow::Continue)
}

/// A lone node answers from its store's counter (expired keys count until purged, as in
/// Redis); in a cluster every partition is counted once, by one of its owners.
pub(super) async fn dbsize(ctx: &mut Ctx<'_>) -> CmdResult {
    let cluster = &ctx.state.cluster;
    let n = if cluster.is_clustered() {
        cluster.count(ctx.now_ms).await?
    } else {
        cluster.stats_off_workers().await.keys
    };
    ctx.int(n as i64)
}

/// Keys deleted per atomic update while flushing, so one FLUSHDB never holds many locks.
const FLUSH_CHUNK: usize = 256;

pub(super) async fn flushdb(ctx: &mut Ctx<'_>, args: &[Bytes]) -> CmdResult {
    if !ctx.state.allow_flushdb {
        return Err(CmdError::new(
            "disabled",
            "ERR FLUSHDB is disabled on this node: set allow_flushdb = true (OPENCLUSTER_ALLOW_FLUSHDB) to enable it",
        ));
    }
    match args.get(1).map(|a| upper(a)) {
        None => {}
        Some(mode) if (mode == b"ASYNC" || mode == b"SYNC") && args.len() == 2 => {}
        Some(_) => return Err(CmdError::syntax()),
    }
    let cluster = &ctx.state.cluster;
    let now = unix_ms();
    for p in 0..cluster.partitions() {
        let keys = cluster.keys(p, None, now).await?;
        for chunk in keys.chunks(FLUSH_CHUNK) {
            let refs: Vec<&[u8]> = chunk.iter().map(|k| &k[..]).collect();
            cluster
                .update(&refs, |cur, stamp| {
                    cur.iter()
                        .map(|r| {
                            if r.as_ref().is_some_and(|r| r.hlc.physical_ms() <= now) {
                                stamp.delete(r.as_ref())
                            } else {
                                Write::Keep
                            }
                        })
                        .collect()
                })
                .await?;
        }
    }
    // Client-side caches drop everything, as after a Redis FLUSHDB.
    cluster.flushed_through();
    ctx.ok()
}
