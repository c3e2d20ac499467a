//! A full disk: the node refuses writes it cannot keep, with an error to the client, and
//! loses none it acknowledged. The data directory is on a tmpfs the test mounts (needs
//! root, else the test skips itself) of 128 MiB, 96 MiB of it taken by a filler file;
//! writes of 16 KiB values go on until refusals come, with `fsync = always` (an acknowledgement means on disk), under
//! every engine. Then the node is killed with SIGKILL, the filler removed (replaying the
//! log into the engine needs room: acknowledged records the engine could not take wait in
//! the log), and a restarted node must return every acknowledged value. The room freed
//! must hold the log and the engine's copy at once: redb's file takes about twice the
//! 16 KiB values it holds (65 MiB for the 32 MiB written), beside the 32 MiB of log.

use std::path::Path;
use std::process::Command;

use opencluster_tests::{Fsync, Node, NodeOpts, node_only};

const VALUE_BYTES: usize = 16 << 10;

/// A tmpfs mounted on a temp dir for the test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs { dir })
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(self.dir.path()).status().is_ok_and(|s| s.success());
        if !ok {
            eprintln!("could not unmount the test tmpfs at {}", self.dir.path().display());
        }
    }
}

fn full_disk_loses_no_acknowledged_write(engine: &str) {
    node_only!("the storage engines are the node's");
    let fs = match Tmpfs::mount("128m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipping: cannot mount a tmpfs ({why})");
            return;
        }
    };
    let data = fs.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0u8; 96 << 20]).unwrap();
    let mut node = Node::start(NodeOpts::new().fsync(Fsync::Always).data_dir(&data).args(&[
        "--store-engine",
        engine,
        "--store-lmdb-map-bytes",
        "64MiB",
        "--store-wal-segment-bytes",
        "1MiB",
    ]));
    let mut con = node.client();
    let value = |i: usize| format!("{i:08}").repeat(VALUE_BYTES / 8);
    let (mut acked, mut refused) = (Vec::new(), 0);
    for i in 0..4000 {
        match redis::cmd("SET").arg(format!("full:{i}")).arg(value(i)).query::<()>(&mut con) {
            Ok(()) => acked.push(i),
            Err(e) => {
                assert!(!e.is_io_error(), "the connection failed, not the write: {e}");
                refused += 1;
                if refused >= 20 {
                    break;
                }
            }
        }
    }
    assert!(refused > 0, "{engine}: 4000 writes of 16 KiB fit in 32 MiB of free space?");
    assert!(node.is_running(), "{engine}: the node died on a full disk\n{}", node.log());
    eprintln!("{engine}: {} writes acknowledged, then {refused} refused", acked.len());
    node.kill9();
    std::fs::remove_file(&filler).unwrap();
    node.restart();
    let mut con = node.client();
    for i in acked {
        let got: Option<String> = redis::cmd("GET").arg(format!("full:{i}")).query(&mut con).unwrap();
        assert_eq!(got.as_deref(), Some(value(i).as_str()), "{engine}: acknowledged full:{i} lost");
    }
    drop(node);
}

#[test]
fn sled_full_disk_loses_no_acknowledged_write() {
    full_disk_loses_no_acknowledged_write("sled")
}

#[test]
fn redb_full_disk_loses_no_acknowledged_write() {
    full_disk_loses_no_acknowledged_write("redb")
}

#[test]
fn fjall_full_disk_loses_no_acknowledged_write() {
    full_disk_loses_no_acknowledged_write("fjall")
}

#[test]
fn lmdb_full_disk_loses_no_acknowledged_write() {
    full_disk_loses_no_acknowledged_write("lmdb")
}
