//! The file system calls against plain guest memory and a real directory tree as the
//! image: no VM, no KVM.

use std::io;

use libc::c_long;

use crate::guest_os::fs::Vfs;
use crate::guest_os::fs::image::Image;
use crate::guest_os::mm::AddressSpace;
use crate::guest_os::{GuestOs, Outcome, Syscall};
use crate::vstate::memory::GuestMemory;

const MEM: u64 = 32 << 20;
const PATH: u64 = 0x30_0000;
const BUF: u64 = 0x31_0000;
const CWD: u64 = (libc::AT_FDCWD as i64).cast_unsigned();

struct Guest {
    os: GuestOs,
    mem: GuestMemory,
    dir: std::path::PathBuf,
}

impl Guest {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("reap-sysfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root/etc")).unwrap();
        std::fs::create_dir_all(dir.join("root/tmp")).unwrap();
        std::fs::write(dir.join("root/etc/hostname"), b"image\n").unwrap();
        let mem = GuestMemory::anonymous(MEM).unwrap();
        let mut os = GuestOs::new(
            AddressSpace::new(MEM, 0x40_0000),
            Box::new(io::sink()),
            Box::new(io::sink()),
        );
        let image = Image::open(&dir.join("root")).unwrap();
        os.set_vfs(Vfs::new(image, b"/bin/prog".to_vec(), b"/".to_vec()));
        Self { os, mem, dir }
    }

    fn ret(&mut self, nr: c_long, args: &[u64]) -> i64 {
        let mut all = [0; 6];
        all[..args.len()].copy_from_slice(args);
        let call = Syscall {
            nr: nr.cast_unsigned(),
            args: all,
        };
        match self.os.syscall(&self.mem, &call) {
            Outcome::Return(v) => v,
            other => panic!("{nr}: {other:?}"),
        }
    }

    fn path(&self, p: &str) -> u64 {
        let mut b = p.as_bytes().to_vec();
        b.push(0);
        self.mem.write(PATH, &b).unwrap();
        PATH
    }

    fn bytes(&self, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        self.mem.read(BUF, &mut b).unwrap();
        b
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn errno(e: i32) -> i64 {
    -i64::from(e)
}

#[test]
fn files_are_opened_read_written_seeked_duplicated_and_listed() {
    use libc::*;
    let mut g = Guest::new("rw");
    let p = g.path("/etc/hostname");
    let fd = g.ret(SYS_openat, &[CWD, p, O_RDONLY as u64, 0]);
    assert_eq!(fd, 3);
    assert_eq!(g.ret(SYS_read, &[3, BUF, 100]), 6);
    assert_eq!(g.bytes(6), b"image\n");
    assert_eq!(g.ret(SYS_write, &[3, BUF, 1]), errno(EBADF), "read-only");
    assert_eq!(g.ret(SYS_lseek, &[3, 1, SEEK_SET as u64]), 1);
    assert_eq!(g.ret(SYS_dup, &[3]), 4);
    assert_eq!(g.ret(SYS_read, &[4, BUF, 3]), 3, "the offset is shared");
    assert_eq!(g.bytes(3), b"mag");
    assert_eq!(g.ret(SYS_pread64, &[3, BUF, 2, 0]), 2);
    assert_eq!(g.ret(SYS_close, &[3]), 0);
    assert_eq!(g.ret(SYS_close, &[3]), errno(EBADF));

    // A new file in /tmp, written, read back and listed; the image is untouched.
    let p = g.path("/tmp/new");
    let flags = (O_CREAT | O_RDWR | O_EXCL) as u64;
    assert_eq!(g.ret(SYS_openat, &[CWD, p, flags, 0o644]), 3);
    g.mem.write(BUF, b"hello").unwrap();
    assert_eq!(g.ret(SYS_write, &[3, BUF, 5]), 5);
    assert_eq!(g.ret(SYS_openat, &[CWD, p, flags, 0o644]), errno(EEXIST));
    assert_eq!(g.ret(SYS_pread64, &[3, BUF + 100, 10, 1]), 4);
    assert_eq!(g.ret(SYS_ftruncate, &[3, 2]), 0);
    assert_eq!(g.ret(SYS_lseek, &[3, 0, SEEK_END as u64]), 2);
    assert!(!g.dir.join("root/tmp/new").exists());
    let p = g.path("/tmp");
    let d = g.ret(SYS_openat, &[CWD, p, (O_RDONLY | O_DIRECTORY) as u64, 0]);
    let n = g.ret(SYS_getdents64, &[d.cast_unsigned(), BUF, 4096]);
    assert!(n > 0);
    let listing = g.bytes(usize::try_from(n).unwrap());
    assert!(listing.windows(4).any(|w| w == b"new\0"));
    assert_eq!(
        g.ret(SYS_getdents64, &[d.cast_unsigned(), BUF, 4096]),
        0,
        "the end"
    );

    // Writing an image file copies it up.
    let p = g.path("/etc/hostname");
    let fd = g.ret(SYS_openat, &[CWD, p, (O_WRONLY | O_TRUNC) as u64, 0]);
    assert!(fd > 0);
    g.mem.write(BUF, b"changed").unwrap();
    assert_eq!(g.ret(SYS_write, &[fd.cast_unsigned(), BUF, 7]), 7);
    assert_eq!(
        std::fs::read(g.dir.join("root/etc/hostname")).unwrap(),
        b"image\n"
    );
    let p = g.path("/etc/hostname");
    assert_eq!(g.ret(SYS_newfstatat, &[CWD, p, BUF, 0]), 0);
    let st: crate::guest_os::abi::Stat = g.mem.read_obj(BUF).unwrap();
    assert_eq!(st.size, 7);
}

#[test]
fn paths_outside_the_image_and_bad_descriptors_fail_like_linux() {
    use libc::*;
    let mut g = Guest::new("errors");
    std::fs::write(g.dir.join("secret"), b"secret").unwrap();
    let p = g.path("../../secret");
    assert_eq!(g.ret(SYS_openat, &[CWD, p, 0, 0]), errno(ENOENT));
    let p = g.path("/etc/hostname/x");
    assert_eq!(g.ret(SYS_openat, &[CWD, p, 0, 0]), errno(ENOTDIR));
    let p = g.path("/etc");
    assert_eq!(
        g.ret(SYS_openat, &[CWD, p, O_WRONLY as u64, 0]),
        errno(EISDIR)
    );
    assert_eq!(g.ret(SYS_ioctl, &[0, 0x5401, BUF]), errno(ENOTTY), "TCGETS");
    assert_eq!(g.ret(SYS_ioctl, &[9, 0x5401, BUF]), errno(EBADF));
    assert_eq!(g.ret(SYS_chdir, &[g.path("/etc")]), 0);
    assert_eq!(g.ret(SYS_getcwd, &[BUF, 100]), 5);
    assert_eq!(g.bytes(5), b"/etc\0");
    let p = g.path("hostname");
    assert_eq!(
        g.ret(SYS_access, &[p, R_OK as u64]),
        0,
        "relative to the cwd"
    );
    assert_eq!(g.ret(SYS_pipe2, &[BUF, 0]), 0);
    let fds: [i32; 2] = g.mem.read_obj(BUF).unwrap();
    assert_eq!(fds, [3, 4]);
    g.mem.write(BUF + 8, b"xyz").unwrap();
    assert_eq!(g.ret(SYS_write, &[4, BUF + 8, 3]), 3);
    assert_eq!(g.ret(SYS_read, &[3, BUF + 16, 10]), 3);
    assert_eq!(g.ret(SYS_close, &[4]), 0);
    assert_eq!(
        g.ret(SYS_read, &[3, BUF + 16, 10]),
        0,
        "no writer: end of file"
    );
}
