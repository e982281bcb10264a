//! Path resolution inside the image, the writable layer and escape attempts, against a
//! real directory tree on the host: no KVM.

use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

/// A scratch directory holding `root/` (the image) and, beside it, `secret` (a file
/// the guest must never read); removed when dropped.
struct Tree {
    dir: PathBuf,
}

impl Tree {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "reap-fs-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::write(dir.join("secret"), b"TOP SECRET").unwrap();
        std::fs::write(root.join("etc/hostname"), b"image\n").unwrap();
        std::fs::write(root.join("usr/lib/libx.so"), b"lib").unwrap();
        symlink("/", root.join("to_root")).unwrap();
        symlink("..", root.join("to_up")).unwrap();
        symlink("../../secret", root.join("etc/to_secret")).unwrap();
        symlink("/../../secret", root.join("abs_secret")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        Self { dir }
    }

    fn vfs(&self) -> Vfs {
        let image = Image::open(&self.dir.join("root")).unwrap();
        Vfs::new(image, b"/bin/prog".to_vec(), b"/".to_vec())
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads the whole regular file `path` resolves to, as `open` + `read` would.
fn read(vfs: &mut Vfs, base: &[u8], path: &[u8]) -> Result<Vec<u8>, Errno> {
    let r = vfs.resolve(base, path, true)?;
    let meta = r.meta.ok_or(libc::ENOENT)?;
    match meta.source {
        Source::Image => {
            let mut buf = vec![0u8; 4096];
            let n = vfs.read_image(99, &r.path, 0, &mut buf)?;
            vfs.drop_host(99);
            buf.truncate(n);
            Ok(buf)
        }
        Source::Layer(ino) => Ok(vfs.layer.inodes[&ino].data.clone()),
        Source::Synth(_) => Err(libc::EACCES),
    }
}

#[test]
fn paths_resolve_to_canonical_paths_inside_the_image() {
    let t = Tree::new();
    let vfs = t.vfs();
    let r = vfs.resolve(b"/", b"/lib/./libx.so", true).unwrap();
    assert_eq!(r.path, b"/usr/lib/libx.so");
    assert_eq!(r.meta.unwrap().size, 3);
    let r = vfs
        .resolve(b"/usr", b"lib/../../etc//hostname", true)
        .unwrap();
    assert_eq!(r.path, b"/etc/hostname");
    let r = vfs.resolve(b"/", b"/lib", false).unwrap();
    assert!(r.meta.unwrap().is_symlink(), "lstat does not follow");
    let r = vfs.resolve(b"/", b"/etc/new", true).unwrap();
    assert_eq!((r.path.as_slice(), r.meta), (&b"/etc/new"[..], None));
    assert_eq!(
        vfs.resolve(b"/", b"/nope/x", true).unwrap_err(),
        libc::ENOENT
    );
    assert_eq!(
        vfs.resolve(b"/", b"/etc/hostname/x", true).unwrap_err(),
        libc::ENOTDIR
    );
    assert_eq!(
        vfs.resolve(b"/", b"/etc/hostname/", true).unwrap_err(),
        libc::ENOTDIR
    );
    assert_eq!(vfs.resolve(b"/", b"/loop1", true).unwrap_err(), libc::ELOOP);
    assert_eq!(vfs.resolve(b"/", b"", true).unwrap_err(), libc::ENOENT);
}

#[test]
fn no_path_reaches_the_secret_beside_the_image() {
    let t = Tree::new();
    let mut vfs = t.vfs();
    for path in [
        &b"../secret"[..],
        b"../../secret",
        b"/../../../secret",
        b"/etc/../../secret",
        b"/to_root/../secret",
        b"/to_up/secret",
        b"/to_up/to_up/../secret",
        b"/etc/to_secret",
        b"/abs_secret",
        b"/proc/self/root/../secret",
        b"/proc/self/root/../../secret",
        b"/proc/1/root/../secret",
    ] {
        let r = read(&mut vfs, b"/etc", path);
        assert_eq!(r, Err(libc::ENOENT), "{}", String::from_utf8_lossy(path));
    }
    // The same links lead to the image's own files.
    assert_eq!(
        read(&mut vfs, b"/", b"/to_root/etc/hostname").unwrap(),
        b"image\n"
    );
    assert_eq!(
        read(&mut vfs, b"/", b"/to_up/etc/hostname").unwrap(),
        b"image\n"
    );
    assert_eq!(
        read(&mut vfs, b"/", b"/proc/self/root/etc/hostname").unwrap(),
        b"image\n"
    );
    assert_eq!(
        read(&mut vfs, b"/", b"../../etc/hostname").unwrap(),
        b"image\n"
    );
    // The host refuses a path that would leave the root even if the VMM asked.
    let image = Image::open(&t.dir.join("root")).unwrap();
    assert!(image.open_file(b"/../secret").is_err());
    assert!(image.open_file(b"/etc/to_secret").is_err());
}

#[test]
fn a_root_that_is_missing_or_not_a_directory_is_refused() {
    let t = Tree::new();
    assert!(matches!(
        Image::open(&t.dir.join("none")),
        Err(ImageError::Open(..))
    ));
    assert!(matches!(
        Image::open(&t.dir.join("secret")),
        Err(ImageError::NotDirectory(_))
    ));
}

#[test]
fn the_writable_layer_creates_copies_up_renames_and_removes_over_the_image() {
    let t = Tree::new();
    let mut vfs = t.vfs();
    // Create in /tmp, then list it.
    let ino = vfs.create(b"/tmp/a", 0o644).unwrap();
    vfs.layer.inodes.get_mut(&ino).unwrap().data = b"hello".to_vec();
    vfs.mkdir(b"/tmp/d", 0o755).unwrap();
    let names = |vfs: &Vfs, dir: &[u8]| -> Vec<Vec<u8>> {
        vfs.list(dir).unwrap().into_iter().map(|e| e.name).collect()
    };
    assert_eq!(names(&vfs, b"/tmp"), [&b"."[..], b"..", b"a", b"d"]);
    // Copy-up of an image file leaves the image untouched.
    let meta = vfs.lookup(b"/etc/hostname").unwrap().unwrap();
    let ino = vfs.copy_up(b"/etc/hostname", &meta).unwrap();
    vfs.layer.inodes.get_mut(&ino).unwrap().data = b"changed\n".to_vec();
    assert_eq!(
        read(&mut vfs, b"/", b"/etc/hostname").unwrap(),
        b"changed\n"
    );
    assert_eq!(
        std::fs::read(t.dir.join("root/etc/hostname")).unwrap(),
        b"image\n"
    );
    // Rename over directories; the image's entry is hidden by a whiteout.
    let meta = vfs.lookup(b"/etc/hostname").unwrap().unwrap();
    vfs.rename(b"/etc/hostname", &meta, b"/tmp/d/h", None)
        .unwrap();
    assert_eq!(vfs.lookup(b"/etc/hostname").unwrap(), None);
    assert_eq!(read(&mut vfs, b"/", b"/tmp/d/h").unwrap(), b"changed\n");
    assert!(!names(&vfs, b"/etc").contains(&b"hostname".to_vec()));
    // A layer directory moves with what is inside it.
    let meta = vfs.lookup(b"/tmp/d").unwrap().unwrap();
    vfs.rename(b"/tmp/d", &meta, b"/tmp/e", None).unwrap();
    assert_eq!(read(&mut vfs, b"/", b"/tmp/e/h").unwrap(), b"changed\n");
    // An image directory does not (EXDEV, as overlayfs).
    let meta = vfs.lookup(b"/usr/lib").unwrap().unwrap();
    assert_eq!(
        vfs.rename(b"/usr/lib", &meta, b"/tmp/l", None),
        Err(libc::EXDEV)
    );
    // Removing: a file, a non-empty directory, an emptied image directory.
    let meta = vfs.lookup(b"/tmp/e").unwrap().unwrap();
    assert_eq!(vfs.remove(b"/tmp/e", &meta, true), Err(libc::ENOTEMPTY));
    let meta = vfs.lookup(b"/usr/lib/libx.so").unwrap().unwrap();
    vfs.remove(b"/usr/lib/libx.so", &meta, false).unwrap();
    let meta = vfs.lookup(b"/usr/lib").unwrap().unwrap();
    vfs.remove(b"/usr/lib", &meta, true).unwrap();
    assert_eq!(
        vfs.resolve(b"/", b"/lib/libx.so", true).unwrap_err(),
        libc::ENOENT
    );
    // Recreated: empty, the image's files stay hidden.
    vfs.mkdir(b"/usr/lib", 0o755).unwrap();
    assert_eq!(names(&vfs, b"/usr/lib"), [&b"."[..], b".."]);
    assert!(
        t.dir.join("root/usr/lib/libx.so").exists(),
        "the image is untouched"
    );
}

#[test]
fn synthetic_entries_exist_and_cannot_be_removed() {
    let t = Tree::new();
    let vfs = t.vfs();
    let null = vfs.resolve(b"/", b"/dev/null", true).unwrap().meta.unwrap();
    assert_eq!(null.kind(), libc::S_IFCHR);
    let exe = vfs.resolve(b"/", b"/proc/self/exe", false).unwrap();
    assert_eq!(
        vfs.readlink(&exe.path, &exe.meta.unwrap()).unwrap(),
        b"/bin/prog"
    );
    let fd1 = vfs.resolve(b"/", b"/proc/self/fd/1", false).unwrap();
    assert!(fd1.meta.unwrap().is_symlink());
    assert_eq!(
        vfs.resolve(b"/", b"/proc/self/fd/7", false).unwrap().meta,
        None
    );
    let names: Vec<Vec<u8>> = vfs
        .list(b"/proc/self/fd")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, [&b"."[..], b"..", b"0", b"1", b"2"]);
    let mut vfs = vfs;
    assert_eq!(vfs.remove(b"/dev/null", &null, false), Err(libc::EACCES));
    assert_eq!(vfs.create(b"/proc/x", 0o644), Err(libc::EACCES));
}

#[test]
fn a_file_system_round_trips_through_its_state_and_notices_a_changed_image() {
    let t = Tree::new();
    let mut vfs = t.vfs();
    vfs.create(b"/tmp/a", 0o600).unwrap();
    vfs.open_image_file(5, b"/etc/hostname").unwrap();
    let state = vfs.save();
    let json = serde_json::to_vec(&state).unwrap();
    let back: VfsState = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, state);
    let restored = Vfs::restore(back.clone()).unwrap();
    assert_eq!(restored.save(), state);
    std::fs::write(t.dir.join("root/etc/hostname"), b"changed under it\n").unwrap();
    let err = Vfs::restore(back).unwrap_err().to_string();
    assert!(err.contains("/etc/hostname"), "{err}");
    assert!(err.contains("changed"), "{err}");
}
