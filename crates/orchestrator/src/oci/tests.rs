//! Archives built here with the `tar` crate, in both formats, unpacked and checked;
//! damaged and hostile ones refused.

use super::*;
use reap_test_support::oci::{Format, Layer, add_dir, add_file, add_link, write_archive};
use tar::EntryType;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn temp(name: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("reap-oci-unit-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    Dir(dir)
}

fn config() -> serde_json::Value {
    serde_json::json!({
        "Entrypoint": ["/bin/app"],
        "Cmd": ["--serve"],
        "Env": ["PATH=/bin", "MODE=test"],
        "WorkingDir": "/srv",
    })
}

/// Three layers: a base, one that whites out and replaces, one that makes `/data`
/// opaque and adds beside it.
fn layers(dir: &Path) -> Vec<Layer> {
    let base = Layer::build(dir.join("l1.tar"), |b| {
        add_dir(b, "bin")?;
        add_file(b, "bin/app", b"app v1", 0o755)?;
        add_file(b, "etc/motd", b"hello", 0o644)?;
        add_file(b, "etc/gone", b"to be whited out", 0o644)?;
        add_file(b, "bin/suid", b"set-user-id", 0o4700)?;
        add_file(b, "etc/secret", b"owner only", 0o600)?;
        add_file(b, "data/a", b"a", 0o644)?;
        add_file(b, "data/sub/b", b"b", 0o644)?;
        add_link(b, EntryType::Symlink, "etc/abs", "/etc/motd")?;
        add_link(b, EntryType::Link, "etc/motd-hard", "etc/motd")
    })
    .unwrap();
    let second = Layer::build(dir.join("l2.tar"), |b| {
        add_file(b, "etc/.wh.gone", b"", 0o644)?;
        add_file(b, "nowhere/.wh.thing", b"", 0o644)?;
        add_file(b, "bin/app", b"app v2", 0o755)?;
        add_dir(b, "srv")
    })
    .unwrap();
    let third = Layer::build(dir.join("l3.tar"), |b| {
        add_file(b, "data/new", b"new", 0o644)?;
        add_file(b, "data/.wh..wh..opq", b"", 0o644)?;
        add_file(b, "data/after", b"after", 0o644)
    })
    .unwrap();
    vec![base, second, third]
}

fn check_unpacked(root: &Path, unpacked: &Unpacked) {
    assert_eq!(fs::read(root.join("bin/app")).unwrap(), b"app v2");
    assert_eq!(fs::read(root.join("etc/motd")).unwrap(), b"hello");
    assert_eq!(fs::read(root.join("etc/motd-hard")).unwrap(), b"hello");
    assert!(!root.join("etc/gone").exists(), "whited out");
    assert!(!root.join("etc/.wh.gone").exists());
    assert_eq!(
        fs::read_link(root.join("etc/abs")).unwrap(),
        Path::new("/etc/motd")
    );
    let mut data: Vec<String> = fs::read_dir(root.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    data.sort();
    assert_eq!(
        data,
        ["after", "new"],
        "the opaque directory hides the lower layer"
    );
    assert!(root.join("srv").is_dir());
    assert!(
        !root.join("nowhere").exists(),
        "a whiteout makes no directory"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(root.join("bin/app"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    let mode = |p: &str| fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("bin/suid"), 0o744, "no set-user-id bit on the host");
    assert_eq!(
        mode("etc/secret"),
        0o644,
        "readable by the instance processes"
    );
    assert_eq!(mode("data"), 0o755);
    assert_eq!(unpacked.layers, 3);
    assert_eq!(unpacked.run.args(), ["/bin/app", "--serve"]);
    assert_eq!(unpacked.run.env, ["PATH=/bin", "MODE=test"]);
    assert_eq!(unpacked.run.workdir.as_deref(), Some("/srv"));
    assert!(unpacked.config_digest.starts_with("sha256:"));
}

#[test]
fn both_formats_unpack_with_whiteouts_and_the_config() {
    for (tag, format) in [
        ("oci", Format::Oci { gzip: false }),
        ("ocigz", Format::Oci { gzip: true }),
        ("docker", Format::DockerSave),
    ] {
        let dir = temp(tag);
        let archive = dir.0.join("image.tar");
        let config_json = write_archive(&archive, format, &layers(&dir.0), config()).unwrap();
        let root = dir.0.join("root");
        let unpacked =
            unpack(&archive, &root).unwrap_or_else(|e| panic!("{tag}: {}", reap_error::chain(&e)));
        check_unpacked(&root, &unpacked);
        assert_eq!(
            unpacked.config_digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&config_json)))
        );
    }
}

fn unpack_err(dir: &Dir, archive: &Path) -> OciError {
    let root = dir.0.join("root-err");
    let _ = fs::remove_dir_all(&root);
    unpack(archive, &root).expect_err("must be refused")
}

#[test]
fn not_tar_missing_empty_and_truncated_archives_are_refused() {
    let dir = temp("bad");
    let missing = unpack_err(&dir, &dir.0.join("nothing.tar"));
    assert!(matches!(missing, OciError::Open(..)), "{missing}");
    let text = dir.0.join("text.tar");
    fs::write(&text, vec![b'x'; 4096]).unwrap();
    assert!(matches!(unpack_err(&dir, &text), OciError::NotTar(_)));
    let empty = dir.0.join("empty.tar");
    fs::write(&empty, b"").unwrap();
    assert!(matches!(unpack_err(&dir, &empty), OciError::NotTar(_)));

    let archive = dir.0.join("image.tar");
    write_archive(
        &archive,
        Format::Oci { gzip: true },
        &layers(&dir.0),
        config(),
    )
    .unwrap();
    let len = fs::metadata(&archive).unwrap().len();
    let cut = dir.0.join("cut.tar");
    fs::copy(&archive, &cut).unwrap();
    File::options()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let e = unpack_err(&dir, &cut);
    assert!(
        matches!(
            e,
            OciError::Corrupt(_) | OciError::Missing(_) | OciError::NoManifest
        ),
        "{}",
        reap_error::chain(&e)
    );

    // A tar without either top file.
    let other = dir.0.join("other.tar");
    Layer::build(&other, |b| add_file(b, "hello.txt", b"hi", 0o644)).unwrap();
    assert!(matches!(unpack_err(&dir, &other), OciError::NoManifest));
}

fn rewrite(archive: &Path, out: &Path, drop: &str, edit: impl Fn(&str, Vec<u8>) -> Vec<u8>) {
    reap_test_support::oci::rewrite(archive, out, drop, edit).unwrap();
}

#[test]
fn a_missing_config_or_manifest_and_digest_mismatches_are_refused() {
    let dir = temp("digest");
    let archive = dir.0.join("image.tar");
    let config_json = write_archive(
        &archive,
        Format::Oci { gzip: false },
        &layers(&dir.0),
        config(),
    )
    .unwrap();
    let config_path = format!("blobs/sha256/{}", hex::encode(Sha256::digest(&config_json)));

    let no_config = dir.0.join("no-config.tar");
    rewrite(&archive, &no_config, &config_path, |_, b| b);
    let e = unpack_err(&dir, &no_config);
    assert!(
        matches!(&e, OciError::Missing(what) if what.contains("config")),
        "{e}"
    );

    let no_index = dir.0.join("no-index.tar");
    rewrite(&archive, &no_index, "index.json", |_, b| b);
    assert!(matches!(unpack_err(&dir, &no_index), OciError::NoManifest));

    // One byte of the config changed (same size): its digest no longer matches.
    let bad_config = dir.0.join("bad-config.tar");
    rewrite(&archive, &bad_config, "", |p, mut b| {
        if p == config_path {
            let i = b.iter().position(|&c| c == b'/').unwrap();
            b[i] = b'_';
        }
        b
    });
    let e = unpack_err(&dir, &bad_config);
    assert!(matches!(e, OciError::DigestMismatch { .. }), "{e}");

    // A layer's bytes changed in place: its digest no longer matches.
    let bad_layer = dir.0.join("bad-layer.tar");
    let l1 = reap_test_support::oci::sha256_file(&dir.0.join("l1.tar")).unwrap();
    rewrite(&archive, &bad_layer, "", |p, mut b| {
        if p == format!("blobs/sha256/{l1}") {
            let i = b.windows(6).position(|w| w == b"app v1").unwrap();
            b[i + 4] = b'X';
        }
        b
    });
    let e = unpack_err(&dir, &bad_layer);
    assert!(
        matches!(e, OciError::DigestMismatch { .. }),
        "{}",
        reap_error::chain(&e)
    );

    // The same in docker-save's format, whose layer names carry no digest: the
    // config's diff_ids catch it.
    let docker = dir.0.join("docker.tar");
    write_archive(&docker, Format::DockerSave, &layers(&dir.0), config()).unwrap();
    let bad_docker = dir.0.join("bad-docker.tar");
    rewrite(&docker, &bad_docker, "", |p, mut b| {
        if p.ends_with("01/layer.tar") {
            let i = b.windows(6).position(|w| w == b"app v1").unwrap();
            b[i + 4] = b'X';
        }
        b
    });
    let e = unpack_err(&dir, &bad_docker);
    assert!(
        matches!(&e, OciError::DigestMismatch { what, .. } if what.contains("uncompressed")),
        "{e}"
    );

    // Garbage in place of the index.
    let garbage = dir.0.join("garbage-index.tar");
    rewrite(&archive, &garbage, "", |p, b| {
        if p == "index.json" {
            b"{not json".to_vec()
        } else {
            b
        }
    });
    assert!(matches!(
        unpack_err(&dir, &garbage),
        OciError::BadJson { .. }
    ));
}

#[test]
fn entries_leading_outside_the_image_are_refused() {
    let dir = temp("escape");
    let outside = dir.0.join("outside");
    fs::create_dir_all(&outside).unwrap();
    type Build = Box<dyn Fn(&mut tar::Builder<File>) -> io::Result<()>>;
    let cases: Vec<(&str, Build)> = vec![
        (
            "dotdot",
            Box::new(|b| {
                // The tar crate refuses to write `..` itself: put the name in the header.
                let mut header = tar::Header::new_gnu();
                header.set_size(2);
                header.set_mode(0o644);
                header.set_entry_type(EntryType::Regular);
                header.as_gnu_mut().unwrap().name[..16].copy_from_slice(b"../outside/evil\0");
                header.set_cksum();
                b.append(&header, &b"hi"[..])
            }),
        ),
        (
            "through-link",
            Box::new({
                let outside = outside.clone();
                move |b| {
                    add_link(b, EntryType::Symlink, "link", outside.to_str().unwrap())?;
                    add_file(b, "link/evil", b"hi", 0o644)
                }
            }),
        ),
        (
            "hardlink-out",
            Box::new(|b| {
                let mut header = tar::Header::new_gnu();
                header.set_size(0);
                header.set_mode(0o644);
                header.set_entry_type(EntryType::Link);
                header.set_path("evil").unwrap();
                header.as_gnu_mut().unwrap().linkname[..17].copy_from_slice(b"../../etc/passwd\0");
                header.set_cksum();
                b.append(&header, io::empty())
            }),
        ),
    ];
    for (tag, build) in cases {
        let layer = Layer::build(dir.0.join(format!("{tag}.layer")), |b| build(b)).unwrap();
        let archive = dir.0.join(format!("{tag}.tar"));
        write_archive(&archive, Format::Oci { gzip: false }, &[layer], config()).unwrap();
        let e = unpack_err(&dir, &archive);
        assert!(
            matches!(e, OciError::Escape { .. } | OciError::ThroughLink { .. }),
            "{tag}: {}",
            reap_error::chain(&e)
        );
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "{tag} wrote outside"
        );
    }
}

mod proptests {
    //! The archive reader takes untrusted bytes: arbitrary bytes and damaged copies of
    //! good archives (bytes changed, cut short) are refused or unpacked, never a panic,
    //! and nothing is written outside the destination.

    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use proptest::test_runner::{Config, TestRunner};

    fn config(cases: u32) -> Config {
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        }
    }

    /// Unpacks `bytes` as an archive into a fresh directory beside the archive; the
    /// directory's parent holds nothing else afterwards.
    fn unpack_bytes(dir: &Path, bytes: &[u8]) {
        let archive = dir.join("case.tar");
        fs::write(&archive, bytes).unwrap();
        let root = dir.join("root");
        let _ = fs::remove_dir_all(&root);
        let _ = unpack(&archive, &root);
        let mut left: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with(".tar") && !n.ends_with(".layer"))
            .collect();
        left.retain(|n| n != "root");
        assert!(left.is_empty(), "written beside the destination: {left:?}");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn arbitrary_bytes_are_refused_without_a_panic() {
        let dir = temp("prop-bytes");
        TestRunner::new(config(256))
            .run(&proptest::collection::vec(any::<u8>(), 0..3000), |bytes| {
                unpack_bytes(&dir.0, &bytes);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn damaged_archives_are_refused_or_unpacked_without_a_panic() {
        let dir = temp("prop-damaged");
        let mut goods = Vec::new();
        for (i, format) in [Format::Oci { gzip: true }, Format::DockerSave]
            .into_iter()
            .enumerate()
        {
            let archive = dir.0.join(format!("good{i}.tar"));
            write_archive(&archive, format, &layers(&dir.0), super::config()).unwrap();
            goods.push(fs::read(&archive).unwrap());
        }
        let strategy = (
            any::<bool>(),
            proptest::collection::vec((any::<Index>(), any::<u8>()), 1..6),
            proptest::option::of(any::<Index>()),
        );
        TestRunner::new(config(192))
            .run(&strategy, |(which, changes, cut)| {
                let mut bytes = goods[usize::from(which)].clone();
                for (at, byte) in changes {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.index(bytes.len()));
                }
                unpack_bytes(&dir.0, &bytes);
                Ok(())
            })
            .unwrap();
    }
}
