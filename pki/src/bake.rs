//! `opencluster-pki bake`: a Docker build context for a customer image that carries one
//! datacenter's keys, derived from an official image.
//!
//! The context holds `Dockerfile`, `README.md`, `tls/` (root.crt, dc.crt, dc.key,
//! gossip.keyring) and `conf.d/` (extra config files). The image gets the keys in
//! `/etc/opencluster/tls/` and the config in `/etc/opencluster/conf.d/`, owned by the
//! image's user 10001.
//!
//! File modes are set on the files of the context (0600 secrets and config, 0644
//! certificates, 0700 directories) and `COPY` keeps them: both the classic builder and
//! BuildKit preserve a source file's mode, whereas `COPY --chmod` would need BuildKit.
//!
//! A hand-issued `node.crt`/`node.key` is never baked: every container started from the
//! image would share one identity. Nodes issue their own from `dc.key` at boot.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::default_keys;
use crate::files::{self, DC_CERT, DC_KEY, FileError, KEYRING, PUBLIC_MODE, ROOT_CERT, SECRET_MODE, TlsDir};

/// The user and group the official images run as.
pub const IMAGE_OWNER: &str = "10001:10001";
/// Where images keep their keys.
pub const IMAGE_TLS_DIR: &str = "/etc/opencluster/tls/";
/// Where images read extra config files from.
pub const IMAGE_CONF_DIR: &str = "/etc/opencluster/conf.d/";

/// What to bake.
#[derive(Debug, Clone)]
pub struct BakeRequest {
    /// A tls dir made by `opencluster-pki datacenter`.
    pub tls_dir: PathBuf,
    /// The base image (an official OpenCluster image).
    pub from: String,
    /// The tag of the image to build.
    pub tag: String,
    /// Where to write the build context.
    pub out: PathBuf,
    /// Config files to copy into `conf.d/` (`*.toml`).
    pub configs: Vec<PathBuf>,
    /// Overwrite an existing context.
    pub force: bool,
}

/// A written build context.
#[derive(Debug, Clone)]
pub struct BakeContext {
    /// The context directory.
    pub dir: PathBuf,
    /// Every file written, relative to `dir`.
    pub files: Vec<PathBuf>,
    /// The cluster of the baked keys.
    pub cluster: String,
    /// The datacenter of the baked keys.
    pub datacenter: String,
}

/// Why baking failed.
#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    /// Reading the tls dir or writing the context failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The tls dir cannot be baked.
    #[error("{dir}: {reason}")]
    TlsDir {
        /// The tls dir.
        dir: PathBuf,
        /// Why not.
        reason: String,
    },
    /// A config file that cannot go into `conf.d/`.
    #[error("config file {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// An image name that is not a plain image reference.
    #[error("invalid image name {name:?} for {flag}: use letters, digits and . _ - / : @ only")]
    ImageName {
        /// `--from` or `--tag`.
        flag: &'static str,
        /// The name.
        name: String,
    },
    /// `docker build` could not run or failed.
    #[error("docker build -t {tag} {dir} failed: {reason}")]
    Docker {
        /// The tag.
        tag: String,
        /// The context.
        dir: PathBuf,
        /// What happened.
        reason: String,
    },
}

/// Writes the build context (see the module doc).
pub fn bake(request: &BakeRequest) -> Result<BakeContext, BakeError> {
    check_image_name("--from", &request.from)?;
    check_image_name("--tag", &request.tag)?;
    let tls = TlsDir::load(&request.tls_dir)?;
    let tls_err = |reason: String| BakeError::TlsDir { dir: request.tls_dir.clone(), reason };
    if default_keys::is_default(&tls) {
        return Err(tls_err(
            "these are the public, INSECURE default keys, which the official images already carry; \
             bake your own keys from `opencluster-pki init` and `opencluster-pki datacenter`"
                .to_string(),
        ));
    }
    if tls.intermediate.is_none() {
        return Err(tls_err(format!(
            "has no {DC_CERT}/{DC_KEY}: an image needs the datacenter intermediate so each node can \
             issue its own certificate"
        )));
    }
    if tls.keyring.is_none() {
        return Err(tls_err(format!(
            "has no {KEYRING}: create one with `opencluster-pki gossip-key --keyring {}/{KEYRING} --install $(opencluster-pki gossip-key)`",
            request.tls_dir.display()
        )));
    }
    let configs = check_configs(&request.configs)?;

    let tls_in = |name: &str| request.tls_dir.join(name);
    let mut files: Vec<(String, String, u32)> = Vec::new();
    for name in [ROOT_CERT, DC_CERT] {
        files.push((format!("tls/{name}"), files::read_text(&tls_in(name))?, PUBLIC_MODE));
    }
    for name in [DC_KEY, KEYRING] {
        files.push((format!("tls/{name}"), files::read_secret(&tls_in(name))?, SECRET_MODE));
    }
    for (path, name) in &configs {
        files.push((format!("conf.d/{name}"), files::read_text(path)?, SECRET_MODE));
    }
    let conf_names: Vec<&str> = configs.iter().map(|(_, n)| n.as_str()).collect();
    files.push(("Dockerfile".to_string(), dockerfile(request, &tls, &conf_names), PUBLIC_MODE));
    files.push(("README.md".to_string(), readme(request, &tls), PUBLIC_MODE));

    files::create_dir(&request.out.join("tls"))?;
    files::create_dir(&request.out.join("conf.d"))?;
    let refs: Vec<(&str, String, u32)> = files.iter().map(|(n, t, m)| (n.as_str(), t.clone(), *m)).collect();
    files::write_all(&request.out, &refs, request.force)?;
    Ok(BakeContext {
        dir: request.out.clone(),
        files: files.iter().map(|(n, _, _)| PathBuf::from(n)).collect(),
        cluster: tls.cluster.clone(),
        datacenter: tls.datacenter.clone(),
    })
}

/// Runs `docker build -t TAG DIR`, its output going to this process's output.
pub fn docker_build(dir: &Path, tag: &str) -> Result<(), BakeError> {
    let fail = |reason: String| BakeError::Docker { tag: tag.to_string(), dir: dir.to_path_buf(), reason };
    let status = Command::new("docker")
        .arg("build")
        .arg("-t")
        .arg(tag)
        .arg(dir)
        .status()
        .map_err(|e| fail(format!("cannot run docker ({e})")))?;
    if !status.success() {
        return Err(fail(format!("docker exited with {status}")));
    }
    Ok(())
}

fn check_image_name(flag: &'static str, name: &str) -> Result<(), BakeError> {
    let ok = !name.is_empty()
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
    if !ok {
        return Err(BakeError::ImageName { flag, name: name.to_string() });
    }
    Ok(())
}

/// Each config file with the name it gets in `conf.d/`.
fn check_configs(paths: &[PathBuf]) -> Result<Vec<(PathBuf, String)>, BakeError> {
    let mut out: Vec<(PathBuf, String)> = Vec::new();
    for path in paths {
        let bad = |reason: &str| BakeError::Config { path: path.clone(), reason: reason.to_string() };
        if !path.is_file() {
            return Err(bad("not found or not a regular file"));
        }
        let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| bad("has no usable file name"))?;
        if !name.ends_with(".toml") {
            return Err(bad("the node reads only *.toml files from conf.d/"));
        }
        let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !plain || name.starts_with('.') {
            return Err(bad("use a file name of letters, digits, '.', '_' and '-' only"));
        }
        if out.iter().any(|(_, n)| n == name) {
            return Err(bad("another config file has the same name"));
        }
        out.push((path.clone(), name.to_string()));
    }
    Ok(out)
}

fn dockerfile(request: &BakeRequest, tls: &TlsDir, configs: &[&str]) -> String {
    let mut d = format!(
        "# Generated by `opencluster-pki bake` for cluster {cluster}, datacenter {dc}.\n\
         # This context and every image built from it hold the datacenter's private keys:\n\
         # anyone with the image can mint identities of datacenter {dc}. Keep both secret.\n\
         # File modes come from the context (0600 keys, 0644 certificates); COPY keeps them.\n\
         FROM {from}\n\
         COPY --chown={IMAGE_OWNER} tls/{ROOT_CERT} tls/{DC_CERT} {IMAGE_TLS_DIR}\n\
         COPY --chown={IMAGE_OWNER} tls/{DC_KEY} tls/{KEYRING} {IMAGE_TLS_DIR}\n",
        cluster = tls.cluster,
        dc = tls.datacenter,
        from = request.from,
    );
    if !configs.is_empty() {
        let sources: Vec<String> = configs.iter().map(|n| format!("conf.d/{n}")).collect();
        d.push_str(&format!("COPY --chown={IMAGE_OWNER} {} {IMAGE_CONF_DIR}\n", sources.join(" ")));
    }
    d.push_str(&format!(
        "ENV OPENCLUSTER_TLS_DIR={}\n\
         LABEL io.opencluster.cluster=\"{}\" io.opencluster.datacenter=\"{}\" \
         io.opencluster.root-fingerprint=\"{}\"\n",
        IMAGE_TLS_DIR.trim_end_matches('/'),
        tls.cluster,
        tls.datacenter,
        tls.root_info.fingerprint,
    ));
    d
}

fn readme(request: &BakeRequest, tls: &TlsDir) -> String {
    format!(
        "# Build context: OpenCluster image for cluster `{cluster}`, datacenter `{dc}`\n\n\
         Generated by `opencluster-pki bake` from `{tls_dir}`.\n\n\
         **This directory contains secrets** (`tls/dc.key`, `tls/gossip.keyring`, maybe\n\
         `conf.d/`). Any image built from it lets its holder mint certificates for datacenter\n\
         `{dc}` and join its gossip: push it only to a private registry, and delete this\n\
         directory once the image is built.\n\n\
         Build and run:\n\n\
         ```sh\n\
         docker build -t {tag} {out}\n\
         docker run -d --name opencluster {tag}\n\
         ```\n\n\
         | In the image | From |\n\
         |---|---|\n\
         | `{IMAGE_TLS_DIR}{ROOT_CERT}` (0644) | the cluster root certificate |\n\
         | `{IMAGE_TLS_DIR}{DC_CERT}` (0644) | the datacenter intermediate certificate |\n\
         | `{IMAGE_TLS_DIR}{DC_KEY}` (0600) | the datacenter intermediate key (secret) |\n\
         | `{IMAGE_TLS_DIR}{KEYRING}` (0600) | the gossip keyring (secret) |\n\
         | `{IMAGE_CONF_DIR}*.toml` (0600) | extra configuration |\n\n\
         Root fingerprint: `{fp}`\n",
        cluster = tls.cluster,
        dc = tls.datacenter,
        tls_dir = request.tls_dir.display(),
        tag = request.tag,
        out = request.out.display(),
        fp = tls.root_info.fingerprint,
    )
}
