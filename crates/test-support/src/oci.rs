//! OCI image archives built by the tests themselves, in the two formats reap reads: an
//! OCI image layout (`index.json`, `blobs/sha256/...`, as `skopeo copy ...
//! oci-archive:` and `podman save --format oci-archive` write) and docker-save's
//! (`manifest.json`, `HEX.json`, `ID/layer.tar`).

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Which format an archive is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An OCI image layout; layers gzipped if `gzip`.
    Oci {
        /// Whether the layers are gzipped.
        gzip: bool,
    },
    /// docker-save's format (plain tar layers).
    DockerSave,
}

/// A layer: a tar file on disk.
#[derive(Debug, Clone)]
pub struct Layer(pub PathBuf);

impl Layer {
    /// Writes a layer to `path` with `build`, which adds entries to the tar.
    pub fn build(
        path: impl Into<PathBuf>,
        build: impl FnOnce(&mut tar::Builder<File>) -> io::Result<()>,
    ) -> io::Result<Self> {
        let path = path.into();
        let mut builder = tar::Builder::new(File::create(&path)?);
        builder.follow_symlinks(false);
        build(&mut builder)?;
        builder.into_inner()?.sync_all()?;
        Ok(Self(path))
    }

    /// A layer holding the directory tree `dir` (links kept as links) at the root.
    pub fn from_dir(path: impl Into<PathBuf>, dir: &Path) -> io::Result<Self> {
        Self::build(path, |b| b.append_dir_all(".", dir))
    }
}

/// Adds a regular file `path` with `bytes` and `mode` to a layer.
pub fn add_file(b: &mut tar::Builder<File>, path: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(mode);
    header.set_mtime(1_700_000_000);
    header.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut header, path, bytes)
}

/// Adds an entry of `kind` at `path` pointing to `target` (a symbolic or hard link).
pub fn add_link(
    b: &mut tar::Builder<File>,
    kind: tar::EntryType,
    path: &str,
    target: &str,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o777);
    header.set_mtime(1_700_000_000);
    header.set_entry_type(kind);
    b.append_link(&mut header, path, target)
}

/// Adds a directory entry at `path`.
pub fn add_dir(b: &mut tar::Builder<File>, path: &str) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o755);
    header.set_mtime(1_700_000_000);
    header.set_entry_type(tar::EntryType::Directory);
    b.append_data(&mut header, path, io::empty())
}

/// The sha256 of a file, in hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(hex::encode(hash.finalize()))
}

/// Writes the image of `layers` (lowest first) with the image config's `config`
/// object (`Entrypoint`, `Cmd`, `Env`, `WorkingDir`) as an archive at `out`, in
/// `format`. Returns the config's JSON bytes.
pub fn write_archive(
    out: &Path,
    format: Format,
    layers: &[Layer],
    config: serde_json::Value,
) -> io::Result<Vec<u8>> {
    let work = out.with_extension("parts");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut diff_ids = Vec::new();
    let mut blobs = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        diff_ids.push(format!("sha256:{}", sha256_file(&layer.0)?));
        let blob = match format {
            Format::Oci { gzip: true } => {
                let path = work.join(format!("layer{i}.tar.gz"));
                let mut gz = flate2::write::GzEncoder::new(
                    File::create(&path)?,
                    flate2::Compression::fast(),
                );
                io::copy(&mut File::open(&layer.0)?, &mut gz)?;
                gz.finish()?.sync_all()?;
                path
            }
            _ => layer.0.clone(),
        };
        blobs.push(blob);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))?;
    let config_hex = hex::encode(Sha256::digest(&config));
    let mut archive = tar::Builder::new(File::create(out)?);
    let mut put = |name: &str, bytes: &mut dyn Read, len: u64| -> io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(len);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        archive.append_data(&mut header, name, bytes)
    };
    match format {
        Format::Oci { gzip } => {
            let media = if gzip {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            } else {
                "application/vnd.oci.image.layer.v1.tar"
            };
            let mut layer_descs = Vec::new();
            for blob in &blobs {
                let hex = sha256_file(blob)?;
                let len = std::fs::metadata(blob)?.len();
                put(&format!("blobs/sha256/{hex}"), &mut File::open(blob)?, len)?;
                layer_descs.push(serde_json::json!({"mediaType": media, "digest": format!("sha256:{hex}"), "size": len}));
            }
            put(
                &format!("blobs/sha256/{config_hex}"),
                &mut &config[..],
                config.len() as u64,
            )?;
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_hex}"), "size": config.len()},
                "layers": layer_descs,
            }))?;
            let manifest_hex = hex::encode(Sha256::digest(&manifest));
            put(
                &format!("blobs/sha256/{manifest_hex}"),
                &mut &manifest[..],
                manifest.len() as u64,
            )?;
            let index = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "manifests": [{
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": format!("sha256:{manifest_hex}"),
                    "size": manifest.len(),
                    "platform": {"architecture": "amd64", "os": "linux"},
                }],
            }))?;
            put("index.json", &mut &index[..], index.len() as u64)?;
            let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
            put("oci-layout", &mut &layout[..], layout.len() as u64)?;
        }
        Format::DockerSave => {
            let mut names = Vec::new();
            for (i, blob) in blobs.iter().enumerate() {
                let name = format!("{:064x}/layer.tar", i + 1);
                let len = std::fs::metadata(blob)?.len();
                put(&name, &mut File::open(blob)?, len)?;
                names.push(name);
            }
            put(
                &format!("{config_hex}.json"),
                &mut &config[..],
                config.len() as u64,
            )?;
            let manifest = serde_json::to_vec(&serde_json::json!([{
                "Config": format!("{config_hex}.json"),
                "RepoTags": ["reap-test:latest"],
                "Layers": names,
            }]))?;
            put("manifest.json", &mut &manifest[..], manifest.len() as u64)?;
        }
    }
    archive.into_inner()?.sync_all()?;
    std::fs::remove_dir_all(&work)?;
    Ok(config)
}

/// Writes the archive `archive` again as `out`, without its file `drop`, and with
/// `edit` applied to the bytes of each file kept (given its path).
pub fn rewrite(
    archive: &Path,
    out: &Path,
    drop: &str,
    edit: impl Fn(&str, Vec<u8>) -> Vec<u8>,
) -> io::Result<()> {
    let mut input = tar::Archive::new(File::open(archive)?);
    let mut output = tar::Builder::new(File::create(out)?);
    for entry in input.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if path == drop {
            continue;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        let bytes = edit(&path, bytes);
        let mut header = entry.header().clone();
        header.set_size(bytes.len() as u64);
        output.append_data(&mut header, &path, &bytes[..])?;
    }
    output.into_inner()?.sync_all()
}

/// Changes the byte just after the first occurrence of `marker` in the file `path`,
/// in place (to damage a blob without changing any size).
pub fn flip_after(path: &Path, marker: &[u8]) -> io::Result<()> {
    let bytes = std::fs::read(path)?;
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "marker not in the file"))?
        + marker.len();
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.seek(io::SeekFrom::Start(at as u64))?;
    f.write_all(&[bytes[at] ^ 0x20])?;
    f.sync_all()
}
