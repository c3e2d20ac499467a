//! Many requests at once: a 1,000-command pipeline sent in one write (replies come back
//! complete and in order) and 100 concurrent connections each working on its own keys.

use std::collections::BTreeSet;

use opencluster_tests::resp::encode_command;
use opencluster_tests::{Node, Reply, bulk, int, nil, ok};

#[test]
fn a_pipeline_of_1000_commands_in_one_write_gets_replies_in_order() {
    let node = Node::start_default();
    let mut c = node.raw();
    let mut buf = Vec::new();
    let mut expected = Vec::new();
    for i in 0..250 {
        let key = format!("p:{i}");
        let val = format!("value-{i}");
        buf.extend(encode_command(&["SET", &key, &val]));
        expected.push(ok());
        buf.extend(encode_command(&["GET", &key]));
        expected.push(bulk(&val));
        buf.extend(encode_command(&["INCR", "counter"]));
        expected.push(int(i + 1));
        buf.extend(encode_command(&["GET", &format!("missing:{i}")]));
        expected.push(nil());
    }
    assert_eq!(expected.len(), 1000);
    c.send_raw(&buf).unwrap();
    for (i, want) in expected.iter().enumerate() {
        let got = c.read_reply().unwrap_or_else(|e| panic!("reply {i} of 1000: {e}"));
        assert_eq!(&got, want, "reply {i} of the pipeline");
    }
    assert_eq!(c.cmd(&["DBSIZE"]), int(251));
}

#[test]
fn a_pipeline_through_the_redis_crate() {
    let node = Node::start_default();
    let mut con = node.client();
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
    }
    for i in 0..500 {
        pipe.cmd("GET").arg(format!("k{i}"));
    }
    let values: Vec<i64> = pipe.query(&mut con).unwrap();
    assert_eq!(values, (0..500).collect::<Vec<i64>>());
}

#[test]
fn a_hundred_concurrent_clients_each_with_its_own_keys() {
    let node = Node::start_default();
    const CLIENTS: usize = 100;
    const KEYS: usize = 50;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let node = &node;
                s.spawn(move || {
                    let mut con = node.client();
                    for k in 0..KEYS {
                        let key = format!("c{client}:k{k}");
                        let () =
                            redis::cmd("SET").arg(&key).arg(format!("{client}-{k}")).query(&mut con).unwrap();
                        let n: i64 =
                            redis::cmd("INCR").arg(format!("c{client}:count")).query(&mut con).unwrap();
                        assert_eq!(n, k as i64 + 1, "client {client}'s counter");
                    }
                    for k in 0..KEYS {
                        let v: String =
                            redis::cmd("GET").arg(format!("c{client}:k{k}")).query(&mut con).unwrap();
                        assert_eq!(v, format!("{client}-{k}"));
                    }
                    // Keep the connection open until every client is done with its writes.
                    con
                })
            })
            .collect();
        let cons: Vec<_> = handles.into_iter().map(|h| h.join().expect("client thread")).collect();
        assert_eq!(cons.len(), CLIENTS);
        let mut c = node.raw();
        assert_eq!(c.cmd(&["DBSIZE"]), int((CLIENTS * (KEYS + 1)) as i64));
        let info = c.cmd(&["INFO", "clients"]).text();
        let connected: usize = info
            .lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .expect("connected_clients")
            .trim()
            .parse()
            .unwrap();
        assert!(connected > CLIENTS, "{CLIENTS} clients plus this one are connected, INFO says {connected}");
    });
    let mut c = node.raw();
    let keys = c.cmd(&["KEYS", "c7:*"]);
    let keys: BTreeSet<String> = keys.array().iter().map(Reply::text).collect();
    assert_eq!(keys.len(), KEYS + 1);
}
