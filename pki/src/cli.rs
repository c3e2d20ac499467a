//! The subcommands of `opencluster-pki`: their flags and help, and the few lines that turn
//! each into library calls and a report on stdout.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, bail};
use clap::{ArgGroup, Parser, Subcommand};

use opencluster_pki::bake::{self, BakeRequest};
use opencluster_pki::ca::{
    DATACENTER_VALIDITY_DAYS, ISSUED_LEAF_VALIDITY_DAYS, LeafRequest, ROOT_VALIDITY_DAYS, RootCa, Validity,
};
use opencluster_pki::files::{self, KEYRING, LEAF_CERT, LEAF_KEY, PUBLIC_MODE, ROOT_CERT, SECRET_MODE};
use opencluster_pki::{GossipKey, Keyring, Role, format_time, inspect};

/// Keys and certificates for OpenCluster: the cluster's root CA, one intermediate CA per
/// datacenter, leaf certificates, the gossip keyring, and customer images carrying them.
///
/// Typical flow: `init` once (keep its output offline), `datacenter` per datacenter,
/// `bake --build` to make the image your hosts run. See docs/security.md.
#[derive(Debug, Parser)]
#[command(name = "opencluster-pki", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the cluster's root CA: DIR/root.crt and DIR/root.key (mode 0600).
    ///
    /// The root is long-lived and signs only datacenter intermediates. Keep DIR offline
    /// (an encrypted USB stick, a vault); nodes never need root.key.
    Init {
        /// Cluster name (a DNS label: lowercase letters, digits, '-'). Part of every identity.
        #[arg(long, value_name = "NAME")]
        cluster: String,
        /// Directory to write (created with mode 0700).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = ROOT_VALIDITY_DAYS)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Create a datacenter's intermediate CA and a fresh gossip keyring.
    ///
    /// Writes DIR2/root.crt, DIR2/dc.crt, DIR2/dc.key (0600) and DIR2/gossip.keyring (0600):
    /// DIR2 is directly usable as a node's or connector's --tls-dir, and is what `bake` puts
    /// into an image. Anyone holding dc.key can mint identities for this datacenter.
    Datacenter {
        /// The CA dir made by `init` (root.crt, root.key).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Datacenter name (a DNS label).
        #[arg(long, value_name = "NAME")]
        dc: String,
        /// Directory to write (created with mode 0700).
        #[arg(long, value_name = "DIR2")]
        out: PathBuf,
        /// Validity in days (cut to the root's).
        #[arg(long, default_value_t = DATACENTER_VALIDITY_DAYS)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a leaf certificate by hand from a datacenter intermediate.
    ///
    /// Writes DIR3/node.crt (leaf + intermediate) and DIR3/node.key (0600), plus copies of
    /// root.crt and (for nodes and connectors) gossip.keyring, so DIR3 is a complete
    /// --tls-dir without the intermediate key. Nodes normally issue their own certificates
    /// at boot; use this for clients, or for hosts that must not hold dc.key. Certificates
    /// issued here are not renewed automatically.
    Issue {
        /// The tls dir made by `datacenter` (with dc.crt and dc.key).
        #[arg(long, value_name = "DIR2")]
        ca: PathBuf,
        /// Role in the identity: node, connector or client.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Process name (a DNS name); also a DNS SAN.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// More SANs: an IP address or DNS name. Repeatable.
        #[arg(long = "san", value_name = "IP_OR_DNS")]
        sans: Vec<String>,
        /// Directory to write.
        #[arg(long, value_name = "DIR3")]
        out: PathBuf,
        /// Validity in days (cut to the intermediate's).
        #[arg(long, default_value_t = ISSUED_LEAF_VALIDITY_DAYS)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Print a new gossip key, or edit a keyring file.
    ///
    /// Without --keyring: prints a new random 32-byte key (base64). With --keyring FILE
    /// alone: lists the keys' ids. Rotation with no downtime: --install the new key on every
    /// process, then --use it on every process, then --remove the old one everywhere.
    #[command(group(ArgGroup::new("action").args(["install", "use_key", "remove"])))]
    GossipKey {
        /// The keyring file to edit (created by --install when missing, mode 0600).
        #[arg(long, value_name = "FILE")]
        keyring: Option<PathBuf>,
        /// Add KEY to the accepted keys.
        #[arg(long, value_name = "KEY", requires = "keyring")]
        install: Option<String>,
        /// Make the installed KEY the one packets are sealed with.
        #[arg(long = "use", value_name = "KEY", requires = "keyring")]
        use_key: Option<String>,
        /// Remove KEY (not the primary) from the accepted keys.
        #[arg(long, value_name = "KEY", requires = "keyring")]
        remove: Option<String>,
    },
    /// Write a Docker build context for an image carrying a datacenter's keys.
    ///
    /// DIR4 gets a Dockerfile (FROM IMAGE, the keys into /etc/opencluster/tls/ owned by
    /// 10001:10001, 0600 keys and 0644 certificates, config files into
    /// /etc/opencluster/conf.d/), the files, and a README. The context and the image hold
    /// secrets: keep them private.
    Bake {
        /// The tls dir made by `datacenter`.
        #[arg(long, value_name = "DIR2")]
        tls_dir: PathBuf,
        /// Base image, e.g. opencluster/node:0.1.0 (build-images.sh tags VERSION and latest).
        #[arg(long, value_name = "IMAGE")]
        from: String,
        /// Tag of the image to build, e.g. registry.example.com/acme/opencluster-node:dc1.
        #[arg(long, value_name = "IMAGE")]
        tag: String,
        /// Directory to write the build context to.
        #[arg(long, value_name = "DIR4")]
        out: PathBuf,
        /// A config file (*.toml) to copy into conf.d/. Repeatable.
        #[arg(long = "config", value_name = "FILE")]
        configs: Vec<PathBuf>,
        /// Run `docker build -t TAG DIR4` afterwards.
        #[arg(long)]
        build: bool,
        /// Overwrite an existing context.
        #[arg(long)]
        force: bool,
    },
    /// Show what a certificate file says: subject, SANs, role, cluster, datacenter,
    /// validity, SHA-256 fingerprint (every certificate of a chain).
    Inspect {
        /// A PEM certificate file.
        file: PathBuf,
    },
    /// Check that the chain in FILE (leaf + intermediate) is valid under ROOT now (and for
    /// ROLE). Exit status 0 when valid, 1 with the reason otherwise.
    Verify {
        /// The root certificate (root.crt), or a directory holding it.
        #[arg(long, value_name = "ROOT")]
        ca: PathBuf,
        /// The chain to check, e.g. node.crt.
        file: PathBuf,
        /// The role the certificate must have: node, connector or client.
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse().map_err(|e: opencluster_pki::identity::IdentityError| e.to_string())
}

/// Runs one subcommand.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let now = SystemTime::now();
    match cli.command {
        Command::Init { cluster, out, days, force } => {
            let root = RootCa::create(&cluster, Validity::days(now, days))?;
            let written = files::write_root(&out, &root, force)?;
            println!("root CA of cluster {cluster}, valid until {}:", format_time(root.info().not_after));
            list(&written);
            println!(
                "keep {} offline; next: opencluster-pki datacenter --ca {} --dc NAME --out DIR",
                out.display(),
                out.display()
            );
        }
        Command::Datacenter { ca, dc, out, days, force } => {
            let root = files::load_root(&ca)?;
            let intermediate = root.create_datacenter(&dc, Validity::days(now, days))?;
            let keyring = Keyring::generate()?;
            let written = files::write_datacenter(&out, &root.cert_pem(), &intermediate, &keyring, force)?;
            println!(
                "intermediate CA of datacenter {dc} (cluster {}), valid until {}, and a new gossip keyring:",
                root.cluster(),
                format_time(intermediate.info().not_after)
            );
            list(&written);
            println!(
                "use {} as --tls-dir, or bake it into an image: opencluster-pki bake --tls-dir {} ...",
                out.display(),
                out.display()
            );
        }
        Command::Issue { ca, role, name, sans, out, days, force } => {
            let tls = files::load_datacenter(&ca)?;
            let Some(dc) = tls.intermediate.as_ref() else { bail!("{}: no intermediate", ca.display()) };
            let leaf = dc.issue(&LeafRequest { role, name, sans, validity: Validity::days(now, days) })?;
            let mut out_files =
                vec![(LEAF_CERT, leaf.chain_pem(), PUBLIC_MODE), (LEAF_KEY, leaf.key_pem(), SECRET_MODE)];
            // Make DIR3 a complete tls dir; clients do not gossip, so they get no keyring.
            out_files.extend(copy_unless_same(&ca, &out, ROOT_CERT, PUBLIC_MODE)?);
            if role != Role::Client && tls.keyring.is_some() {
                out_files.extend(copy_unless_same(&ca, &out, KEYRING, SECRET_MODE)?);
            }
            let written = files::write_all(&out, &out_files, force)?;
            println!("{} valid until {}:", leaf.identity, format_time(leaf.info.not_after));
            list(&written);
        }
        Command::GossipKey { keyring, install, use_key, remove } => {
            gossip_key(keyring, install, use_key, remove)?
        }
        Command::Bake { tls_dir, from, tag, out, configs, build, force } => {
            let request = BakeRequest { tls_dir, from, tag: tag.clone(), out, configs, force };
            let ctx = bake::bake(&request)?;
            println!(
                "build context for cluster {} datacenter {} in {} (it holds secrets):",
                ctx.cluster,
                ctx.datacenter,
                ctx.dir.display()
            );
            list(&ctx.files.iter().map(|f| ctx.dir.join(f)).collect::<Vec<_>>());
            if build {
                bake::docker_build(&ctx.dir, &tag)?;
                println!("built {tag}");
            } else {
                println!("next: docker build -t {tag} {}", ctx.dir.display());
            }
        }
        Command::Inspect { file } => print!("{}", inspect::inspect_file(&file, now)?),
        Command::Verify { ca, file, role } => {
            let root = if ca.is_dir() { ca.join(ROOT_CERT) } else { ca };
            let id = inspect::verify_file(&root, &file, role, now)?;
            println!("{}: OK, {id}", file.display());
        }
    }
    Ok(())
}

fn gossip_key(
    keyring: Option<PathBuf>,
    install: Option<String>,
    use_key: Option<String>,
    remove: Option<String>,
) -> anyhow::Result<()> {
    let Some(path) = keyring else {
        println!("{}", GossipKey::generate()?.to_base64());
        return Ok(());
    };
    let shown = path.display().to_string();
    let parse = |k: &str| k.parse::<GossipKey>().with_context(|| format!("--keyring {shown}"));
    if let (Some(key), false) = (&install, path.exists()) {
        let ring = Keyring::with_primary(parse(key)?);
        files::write_file(&path, ring.to_toml().as_bytes(), SECRET_MODE, false)?;
        println!("{shown}: new keyring with primary key {}", ring.primary().id());
        return Ok(());
    }
    let text = files::read_secret(&path)?;
    let mut ring = Keyring::from_toml(&text).with_context(|| shown.clone())?;
    let done = if let Some(key) = install {
        let key = parse(&key)?;
        ring.install(key.clone());
        format!("installed key {}", key.id())
    } else if let Some(key) = use_key {
        let key = parse(&key)?;
        ring.use_key(&key).with_context(|| shown.clone())?;
        format!("key {} is now primary", key.id())
    } else if let Some(key) = remove {
        let key = parse(&key)?;
        ring.remove(&key).with_context(|| shown.clone())?;
        format!("removed key {}", key.id())
    } else {
        for key in ring.keys() {
            let tag = if key == ring.primary() { "primary" } else { "accepted" };
            println!("{}  {tag}", key.id());
        }
        return Ok(());
    };
    files::write_file(&path, ring.to_toml().as_bytes(), SECRET_MODE, true)?;
    println!("{shown}: {done}");
    Ok(())
}

/// The content of `name` in `from`, to be written to `to` unless an identical copy is
/// already there.
fn copy_unless_same(
    from: &Path,
    to: &Path,
    name: &'static str,
    mode: u32,
) -> anyhow::Result<Option<(&'static str, String, u32)>> {
    let read = |p: &Path| if mode == SECRET_MODE { files::read_secret(p) } else { files::read_text(p) };
    let text = read(&from.join(name))?;
    let dst = to.join(name);
    if dst.exists() && read(&dst)? == text {
        return Ok(None);
    }
    Ok(Some((name, text, mode)))
}

fn list(paths: &[PathBuf]) {
    for p in paths {
        println!("  {}", p.display());
    }
}
