//! OCI image archives, unpacked into a root file system: what `docker save`, `podman
//! save` and `skopeo copy ... oci-archive:` write.
//!
//! An archive is a tar file holding either an OCI image layout (`index.json` and
//! `blobs/sha256/HEX`) or docker-save's format (`manifest.json`, a config file and one
//! tar per layer); Docker 25 and later write both, and the OCI layout is then used.
//! The archive is indexed once (the offset and size of each of its files) and its blobs
//! are read in place, never copied out. Every blob read is checked against the sha256
//! its descriptor (or, in docker-save's format, its file name) names, and every layer's
//! uncompressed bytes against the config's `diff_ids`.
//!
//! Layers (plain tar or gzip) are applied in order. Whiteouts are honoured: `.wh.NAME`
//! removes `NAME` of the layers below, `.wh..wh..opq` empties its directory of what the
//! layers below put there. No entry is written outside the destination: a path with
//! `..` components is refused, so is one whose parent directory is a symbolic link (a
//! link is kept as a link, absolute or not, and never followed while unpacking), and a
//! hard link must name a file inside the destination. Device nodes and FIFOs are
//! skipped; owners are not kept (the guest sees the files as its own), and modes are
//! made safe and readable ([`image_mode`]).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{
    Descriptor, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest, MediaType,
};
use sha2::{Digest as _, Sha256};

/// Largest JSON document (index, manifest, config) read from an archive.
const MAX_JSON_BYTES: u64 = 4 << 20;
/// Deepest nesting of image indexes followed.
const MAX_INDEX_DEPTH: usize = 4;
/// Most bytes of regular files an image unpacks to, over all its layers (a bound on
/// what a small gzipped archive may write).
pub const MAX_UNPACKED_BYTES: u64 = 8 << 30;
/// Most symbolic links followed to find one file of the archive.
const MAX_ARCHIVE_LINKS: usize = 8;

/// Why an image archive cannot be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The archive cannot be opened or read.
    #[error("cannot read the image archive {}", .0.display())]
    Open(PathBuf, #[source] io::Error),
    /// The file is not a tar archive.
    #[error("the image archive is not a tar file")]
    NotTar(#[source] io::Error),
    /// The tar archive is damaged or cut short.
    #[error("the image archive is corrupt or truncated")]
    Corrupt(#[source] io::Error),
    /// Neither layout's top file is there.
    #[error(
        "the archive holds no image: neither index.json (an OCI image layout) nor manifest.json (docker save)"
    )]
    NoManifest,
    /// The index or docker-save manifest lists no image (for linux/amd64).
    #[error("{0} lists no image for linux/amd64")]
    NoImage(String),
    /// A file the image refers to is not in the archive.
    #[error("the archive does not hold {0}")]
    Missing(String),
    /// A JSON document does not parse.
    #[error("{what} is not valid")]
    BadJson {
        /// Which document.
        what: String,
        /// The parser's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A JSON document is over [`MAX_JSON_BYTES`].
    #[error("{0} is too large")]
    TooLarge(String),
    /// A blob's bytes do not have the digest that names them.
    #[error("{what} does not match its digest: expected sha256:{expected}, found sha256:{found}")]
    DigestMismatch {
        /// Which blob.
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        found: String,
    },
    /// A blob's size is not its descriptor's.
    #[error("{what} is {found} bytes, its descriptor says {expected}")]
    SizeMismatch {
        /// Which blob.
        what: String,
        /// The descriptor's size.
        expected: u64,
        /// The blob's size.
        found: u64,
    },
    /// A digest of an algorithm other than sha256, or malformed.
    #[error("unsupported digest {0:?}: only sha256 is supported")]
    UnsupportedDigest(String),
    /// A layer of a media type that cannot be unpacked (zstd, foreign layers).
    #[error("layer {layer} has the unsupported media type {media_type}")]
    UnsupportedLayer {
        /// The layer's number, from 1.
        layer: usize,
        /// Its media type.
        media_type: String,
    },
    /// The config's `diff_ids` do not list one per layer.
    #[error("the config lists {diff_ids} layer digests for {layers} layers")]
    LayerCount {
        /// `rootfs.diff_ids` entries.
        diff_ids: usize,
        /// Layers of the manifest.
        layers: usize,
    },
    /// A layer entry would be written outside the destination.
    #[error("layer {layer}: the entry {path:?} leads outside the image")]
    Escape {
        /// The layer's number, from 1.
        layer: usize,
        /// The entry's path.
        path: String,
    },
    /// A layer entry's parent directory is a symbolic link.
    #[error("layer {layer}: the entry {path:?} goes through the symbolic link {link:?}")]
    ThroughLink {
        /// The layer's number, from 1.
        layer: usize,
        /// The entry's path.
        path: String,
        /// The link.
        link: String,
    },
    /// A layer cannot be read (a damaged tar or gzip stream).
    #[error("layer {layer} is corrupt")]
    Layer {
        /// The layer's number, from 1.
        layer: usize,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The layers unpack to more than [`MAX_UNPACKED_BYTES`].
    #[error("the image unpacks to more than {MAX_UNPACKED_BYTES} bytes")]
    TooBig,
    /// Writing the unpacked image failed.
    #[error("cannot write {}", .path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl OciError {
    /// Whether the archive is at fault (and not the disk the image is unpacked to).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, OciError::Write { .. } | OciError::Open(..))
    }
}

/// The mode a file of a stored image gets, from its mode in the image: no set-user-id,
/// set-group-id or sticky bit and no write permission but the owner's (the image lies
/// on the host, owned by the server's user), readable by everyone (instance processes
/// read it as an unprivileged user); directories `rwxr-xr-x`, execute bits of files
/// kept.
pub fn image_mode(mode: u32, dir: bool) -> u32 {
    if dir { 0o755 } else { (mode & 0o755) | 0o644 }
}

/// How the image's config says to run it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, `KEY=VALUE`.
    pub env: Vec<String>,
    /// `WorkingDir` (`None` when empty or absent).
    pub workdir: Option<String>,
}

impl RunConfig {
    /// The command: `Entrypoint` then `Cmd`.
    pub fn args(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

/// An image unpacked by [`unpack`].
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// How to run it.
    pub run: RunConfig,
    /// The config blob's digest, `sha256:HEX` (the image id).
    pub config_digest: String,
    /// Layers applied.
    pub layers: usize,
    /// Bytes of regular files unpacked (over all layers, before whiteouts).
    pub bytes: u64,
}

/// Unpacks the image in the archive `archive` into `dest` (a directory, created if
/// needed; empty); see the module documentation. On an error `dest` holds part of the
/// image: the caller removes it.
pub fn unpack(archive: &Path, dest: &Path) -> Result<Unpacked, OciError> {
    let file = File::open(archive).map_err(|e| OciError::Open(archive.to_path_buf(), e))?;
    if file
        .metadata()
        .map_err(|e| OciError::Open(archive.to_path_buf(), e))?
        .is_dir()
    {
        return Err(OciError::Open(
            archive.to_path_buf(),
            io::Error::from_raw_os_error(libc::EISDIR),
        ));
    }
    let index = ArchiveIndex::read(&file)?;
    let (config_blob, layers) = if index.contains("index.json") {
        oci_layout(&index)?
    } else if index.contains("manifest.json") {
        docker_save(&index)?
    } else {
        return Err(OciError::NoManifest);
    };
    let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(&config_blob)));
    let config =
        ImageConfiguration::from_reader(&config_blob[..]).map_err(|e| OciError::BadJson {
            what: "the image config".into(),
            source: Box::new(e),
        })?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != layers.len() {
        return Err(OciError::LayerCount {
            diff_ids: diff_ids.len(),
            layers: layers.len(),
        });
    }
    fs::create_dir_all(dest).map_err(write(dest))?;
    let mut bytes: u64 = 0;
    for (i, (layer, diff_id)) in layers.iter().zip(diff_ids).enumerate() {
        let n = i + 1;
        let diff_hex = sha256_hex(diff_id)?;
        let raw = Verify::new(index.open(&layer.path)?);
        let corrupt = |source| OciError::Layer { layer: n, source };
        let mut raw = raw;
        let mut head = [0u8; 2];
        let got = read_full(&mut raw, &mut head).map_err(corrupt)?;
        let gzip = match layer.compression {
            Compression::Gzip => true,
            Compression::None => false,
            Compression::Sniff => head[..got] == [0x1f, 0x8b],
        };
        let chained = io::Cursor::new(head[..got].to_vec()).chain(&mut raw);
        let (written, diff) = if gzip {
            let mut tar = Verify::new(flate2::read::GzDecoder::new(chained));
            let w = apply_layer(dest, n, &mut tar, MAX_UNPACKED_BYTES - bytes)?;
            io::copy(&mut tar, &mut io::sink()).map_err(corrupt)?;
            (w, tar.finish())
        } else {
            let mut tar = Verify::new(chained);
            let w = apply_layer(dest, n, &mut tar, MAX_UNPACKED_BYTES - bytes)?;
            io::copy(&mut tar, &mut io::sink()).map_err(corrupt)?;
            (w, tar.finish())
        };
        io::copy(&mut raw, &mut io::sink()).map_err(corrupt)?;
        let (blob_hex, blob_len) = raw.finish();
        let what = format!("layer {n} ({})", layer.path);
        if let Some(size) = layer.size
            && size != blob_len
        {
            return Err(OciError::SizeMismatch {
                what,
                expected: size,
                found: blob_len,
            });
        }
        if let Some(expected) = &layer.sha256 {
            check_digest(&what, expected, &blob_hex)?;
        }
        check_digest(&format!("layer {n}'s uncompressed tar"), &diff_hex, &diff.0)?;
        bytes += written;
    }
    let run = config
        .config()
        .as_ref()
        .map(|c| RunConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            workdir: c.working_dir().clone().filter(|w| !w.is_empty()),
        })
        .unwrap_or_default();
    Ok(Unpacked {
        run,
        config_digest,
        layers: layers.len(),
        bytes,
    })
}

fn write(path: &Path) -> impl FnOnce(io::Error) -> OciError {
    let path = path.to_path_buf();
    move |source| OciError::Write { path, source }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    /// Unknown (docker-save's layer files): gzip if it starts with gzip's magic.
    Sniff,
}

/// A layer to apply: its file in the archive and what it must be.
#[derive(Debug)]
struct Layer {
    path: String,
    compression: Compression,
    /// The blob's sha256 (hex), when a descriptor or file name gives it.
    sha256: Option<String>,
    size: Option<u64>,
}

/// The OCI image layout: `index.json` to a manifest (through nested indexes), its config
/// and layers.
fn oci_layout(index: &ArchiveIndex) -> Result<(Vec<u8>, Vec<Layer>), OciError> {
    let top = index.read_json("index.json", None)?;
    let mut image_index = ImageIndex::from_reader(&top[..]).map_err(|e| OciError::BadJson {
        what: "index.json".into(),
        source: Box::new(e),
    })?;
    let mut what = "index.json".to_owned();
    let mut manifest = None;
    'depth: for _ in 0..MAX_INDEX_DEPTH {
        for desc in image_index.manifests() {
            let linux_amd64 = desc.platform().as_ref().is_none_or(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
            });
            if !linux_amd64 {
                continue;
            }
            match desc.media_type() {
                MediaType::ImageIndex => {
                    let blob = index.read_blob(desc, "an image index")?;
                    what = format!("the image index {}", desc.digest());
                    image_index =
                        ImageIndex::from_reader(&blob[..]).map_err(|e| OciError::BadJson {
                            what: what.clone(),
                            source: Box::new(e),
                        })?;
                    continue 'depth;
                }
                MediaType::ImageManifest => {
                    manifest = Some(desc.clone());
                    break 'depth;
                }
                MediaType::Other(t)
                    if t == "application/vnd.docker.distribution.manifest.v2+json" =>
                {
                    manifest = Some(desc.clone());
                    break 'depth;
                }
                _ => {}
            }
        }
        break;
    }
    let Some(desc) = manifest else {
        return Err(OciError::NoImage(what));
    };
    let blob = index.read_blob(&desc, "the image manifest")?;
    let manifest = ImageManifest::from_reader(&blob[..]).map_err(|e| OciError::BadJson {
        what: format!("the image manifest {}", desc.digest()),
        source: Box::new(e),
    })?;
    let config = index.read_blob(manifest.config(), "the image config")?;
    let mut layers = Vec::new();
    for (i, desc) in manifest.layers().iter().enumerate() {
        let compression = match desc.media_type() {
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Compression::None,
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
                Compression::Gzip
            }
            MediaType::Other(t) if t == "application/vnd.docker.image.rootfs.diff.tar" => {
                Compression::None
            }
            MediaType::Other(t) if t == "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                Compression::Gzip
            }
            other => {
                return Err(OciError::UnsupportedLayer {
                    layer: i + 1,
                    media_type: other.to_string(),
                });
            }
        };
        let hex = descriptor_hex(desc)?;
        layers.push(Layer {
            path: format!("blobs/sha256/{hex}"),
            compression,
            sha256: Some(hex),
            size: Some(desc.size()),
        });
    }
    Ok((config, layers))
}

/// One image of docker-save's `manifest.json`.
#[derive(serde::Deserialize)]
struct DockerImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// docker-save's format: `manifest.json`'s first image, its config file and layer files.
fn docker_save(index: &ArchiveIndex) -> Result<(Vec<u8>, Vec<Layer>), OciError> {
    let top = index.read_json("manifest.json", None)?;
    let images: Vec<DockerImage> = serde_json::from_slice(&top).map_err(|e| OciError::BadJson {
        what: "manifest.json".into(),
        source: Box::new(e),
    })?;
    let Some(image) = images.into_iter().next() else {
        return Err(OciError::NoImage("manifest.json".into()));
    };
    let config = index.read_json(&image.config, name_digest(&image.config))?;
    let layers = image
        .layers
        .iter()
        .map(|path| Layer {
            path: path.clone(),
            compression: Compression::Sniff,
            sha256: name_digest(path).map(str::to_owned),
            size: None,
        })
        .collect();
    Ok((config, layers))
}

/// The sha256 a docker-save file name carries: `blobs/sha256/HEX` or `HEX.json`.
fn name_digest(path: &str) -> Option<&str> {
    let hex = path
        .strip_prefix("blobs/sha256/")
        .or_else(|| path.strip_suffix(".json"))?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// The hex of a `sha256:HEX` digest string.
fn sha256_hex(digest: &str) -> Result<String, OciError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(hex.to_ascii_lowercase())
        }
        _ => Err(OciError::UnsupportedDigest(digest.to_owned())),
    }
}

fn descriptor_hex(desc: &Descriptor) -> Result<String, OciError> {
    let digest = desc.digest();
    if *digest.algorithm() != DigestAlgorithm::Sha256 {
        return Err(OciError::UnsupportedDigest(digest.to_string()));
    }
    sha256_hex(digest.as_ref())
}

fn check_digest(what: &str, expected: &str, found: &str) -> Result<(), OciError> {
    if expected.eq_ignore_ascii_case(found) {
        Ok(())
    } else {
        Err(OciError::DigestMismatch {
            what: what.to_owned(),
            expected: expected.to_owned(),
            found: found.to_owned(),
        })
    }
}

/// Reads until `buf` is full or the end; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The files of the outer archive: where each one's bytes are.
struct ArchiveIndex<'a> {
    file: &'a File,
    /// Regular files: offset and size.
    files: HashMap<String, (u64, u64)>,
    /// Symbolic links: their targets.
    links: HashMap<String, String>,
}

/// A path of the outer archive without `./` and trailing `/`.
fn archive_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

impl<'a> ArchiveIndex<'a> {
    fn read(file: &'a File) -> Result<Self, OciError> {
        let mut archive = tar::Archive::new(file);
        let mut files = HashMap::new();
        let mut links = HashMap::new();
        let entries = archive.entries().map_err(OciError::NotTar)?;
        let mut seen = 0usize;
        for entry in entries {
            let entry = entry.map_err(|e| {
                if seen == 0 {
                    OciError::NotTar(e)
                } else {
                    OciError::Corrupt(e)
                }
            })?;
            seen += 1;
            let path = archive_path(&String::from_utf8_lossy(&entry.path_bytes()));
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    files.insert(path, (entry.raw_file_position(), entry.size()));
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    if let Some(target) = entry.link_name_bytes() {
                        let target = String::from_utf8_lossy(&target).into_owned();
                        let full = if entry.header().entry_type() == tar::EntryType::Symlink {
                            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                            archive_path(&format!("{dir}/{target}"))
                        } else {
                            archive_path(&target)
                        };
                        links.insert(path, full);
                    }
                }
                _ => {}
            }
        }
        if seen == 0 {
            return Err(OciError::NotTar(io::Error::new(
                io::ErrorKind::InvalidData,
                "no entries",
            )));
        }
        // Every file's bytes must be there: a cut archive is told here, not mid-layer.
        let len = file.metadata().map_err(OciError::Corrupt)?.len();
        if files
            .values()
            .any(|&(off, size)| off.saturating_add(size) > len)
        {
            return Err(OciError::Corrupt(io::Error::from(
                io::ErrorKind::UnexpectedEof,
            )));
        }
        Ok(Self { file, files, links })
    }

    fn contains(&self, path: &str) -> bool {
        self.files.contains_key(path) || self.links.contains_key(path)
    }

    /// The bytes of the file `path`, following links of the archive.
    fn open(&self, path: &str) -> Result<Section<'a>, OciError> {
        let mut p = archive_path(path);
        for _ in 0..=MAX_ARCHIVE_LINKS {
            if let Some(&(pos, size)) = self.files.get(&p) {
                return Ok(Section {
                    file: self.file,
                    pos,
                    end: pos + size,
                });
            }
            match self.links.get(&p) {
                Some(target) => p = target.clone(),
                None => break,
            }
        }
        Err(OciError::Missing(path.to_owned()))
    }

    /// A JSON document, checked against `sha256` (hex) if given.
    fn read_json(&self, path: &str, sha256: Option<&str>) -> Result<Vec<u8>, OciError> {
        let section = self.open(path)?;
        if section.end - section.pos > MAX_JSON_BYTES {
            return Err(OciError::TooLarge(path.to_owned()));
        }
        let mut bytes = Vec::new();
        let mut section = section;
        section.read_to_end(&mut bytes).map_err(OciError::Corrupt)?;
        if let Some(expected) = sha256 {
            check_digest(path, expected, &hex::encode(Sha256::digest(&bytes)))?;
        }
        Ok(bytes)
    }

    /// The blob `desc` names, checked against its size and digest.
    fn read_blob(&self, desc: &Descriptor, what: &str) -> Result<Vec<u8>, OciError> {
        let hex = descriptor_hex(desc)?;
        let path = format!("blobs/sha256/{hex}");
        let what = format!("{what} {}", desc.digest());
        let section = self
            .open(&path)
            .map_err(|_| OciError::Missing(what.clone()))?;
        let found = section.end - section.pos;
        if found != desc.size() {
            return Err(OciError::SizeMismatch {
                what,
                expected: desc.size(),
                found,
            });
        }
        let bytes = self.read_json(&path, None)?;
        check_digest(&what, &hex, &hex::encode(Sha256::digest(&bytes)))?;
        Ok(bytes)
    }
}

/// Bytes `pos..end` of the archive file.
struct Section<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX);
        let want = buf.len().min(room);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// A reader that hashes (sha256) and counts what passes through it.
struct Verify<R> {
    inner: R,
    hash: Sha256,
    len: u64,
}

impl<R: Read> Verify<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }

    /// The hex digest and length of what was read.
    fn finish(self) -> (String, u64) {
        (hex::encode(self.hash.finalize()), self.len)
    }
}

impl<R: Read> Read for Verify<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// A layer entry's path relative to the destination, or an error if it has `..`
/// components; `None` for the root itself.
fn entry_path(layer: usize, raw: &[u8]) -> Result<Option<PathBuf>, OciError> {
    let text = String::from_utf8_lossy(raw);
    let path = Path::new(std::ffi::OsStr::from_bytes(raw));
    let mut rel = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => rel.push(p),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(OciError::Escape {
                    layer,
                    path: text.into_owned(),
                });
            }
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

/// Makes sure every directory above `rel` in `dest` is a real directory, never a
/// symbolic link (with `create`, creating the missing ones and replacing a file).
fn parents(dest: &Path, layer: usize, rel: &Path, create: bool) -> Result<(), OciError> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut at = dest.to_path_buf();
    let mut sofar = PathBuf::new();
    for c in parent.components() {
        at.push(c);
        sofar.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(OciError::ThroughLink {
                    layer,
                    path: rel.display().to_string(),
                    link: sofar.display().to_string(),
                });
            }
            Ok(_) if create => {
                fs::remove_file(&at).map_err(write(&at))?;
                fs::create_dir(&at).map_err(write(&at))?;
            }
            Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&at).map_err(write(&at))?;
            }
            Ok(_) => {
                return Err(OciError::Layer {
                    layer,
                    source: io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{}: not a directory", sofar.display()),
                    ),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(OciError::Layer {
                    layer,
                    source: io::Error::new(e.kind(), format!("{} does not exist", sofar.display())),
                });
            }
            Err(e) => return Err(write(&at)(e)),
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), OciError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(write(path))
}

/// Removes whatever is at `path` (a file, a link or a whole directory), if anything.
fn remove_any(path: &Path) -> Result<(), OciError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(write(path)),
        Ok(_) => fs::remove_file(path).map_err(write(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(write(path)(e)),
    }
}

/// Applies the layer tar read from `tar` (layer number `layer`) onto `dest`, writing at
/// most `room` bytes of regular files; returns the bytes written.
fn apply_layer(dest: &Path, layer: usize, tar: &mut impl Read, room: u64) -> Result<u64, OciError> {
    let corrupt = |source| OciError::Layer { layer, source };
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(false);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    // What this layer put there: an opaque whiteout hides only the layers below.
    let mut written: HashSet<PathBuf> = HashSet::new();
    let mut bytes: u64 = 0;
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let Some(rel) = entry_path(layer, &entry.path_bytes())? else {
            continue;
        };
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        if name.starts_with(".wh.") {
            // A whiteout hides what the layers below put there: where they put no
            // directory, there is nothing to hide (and none is made).
            match parents(dest, layer, &rel, false) {
                Ok(()) => {}
                Err(OciError::Layer { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        if name == ".wh..wh..opq" {
            let dir = dest.join(&parent);
            for child in fs::read_dir(&dir).map_err(write(&dir))?.flatten() {
                if !written.contains(&parent.join(child.file_name())) {
                    remove_any(&child.path())?;
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            remove_any(&dest.join(&parent).join(hidden))?;
            continue;
        }
        parents(dest, layer, &rel, true)?;
        let target = dest.join(&rel);
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                if !fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                    remove_any(&target)?;
                }
                entry.unpack(&target).map_err(write(&target))?;
                set_mode(&target, image_mode(0, true))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Symlink => {
                if kind != tar::EntryType::Symlink && bytes.saturating_add(entry.size()) > room {
                    return Err(OciError::TooBig);
                }
                remove_any(&target)?;
                entry.unpack(&target).map_err(write(&target))?;
                if kind != tar::EntryType::Symlink {
                    bytes += entry.size();
                    let mode = entry.header().mode().unwrap_or(0o644);
                    set_mode(&target, image_mode(mode, false))?;
                }
            }
            tar::EntryType::Link => {
                let raw = entry.link_name_bytes().ok_or_else(|| OciError::Escape {
                    layer,
                    path: rel.display().to_string(),
                })?;
                let Some(source_rel) = entry_path(layer, &raw)? else {
                    return Err(OciError::Escape {
                        layer,
                        path: String::from_utf8_lossy(&raw).into_owned(),
                    });
                };
                parents(dest, layer, &source_rel, false)?;
                let source = dest.join(&source_rel);
                remove_any(&target)?;
                fs::hard_link(&source, &target).map_err(|e| OciError::Layer {
                    layer,
                    source: io::Error::new(
                        e.kind(),
                        format!(
                            "hard link {} to {}: {e}",
                            rel.display(),
                            source_rel.display()
                        ),
                    ),
                })?;
            }
            // Device nodes, FIFOs and the like: not part of a function's image.
            _ => continue,
        }
        written.insert(rel);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;
