//! Synthetic entries: the devices, `/proc` and `/sys` files a program expects, made up
//! by the VMM. They hide the image's entries of the same paths.

/// A synthetic entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synth {
    /// A directory (its children are listed by [`children`]).
    Dir,
    /// `/dev/null`.
    Null,
    /// `/dev/zero`.
    Zero,
    /// `/dev/random` and `/dev/urandom`.
    Random,
    /// A symbolic link to this target (resolved in the guest's root).
    Symlink(Vec<u8>),
    /// A file generated when opened.
    File(Generated),
}

/// The synthetic files whose contents the guest OS generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generated {
    /// `/proc/self/maps`.
    Maps,
    /// `/proc/self/status`.
    Status,
    /// `/proc/self/stat`.
    Stat,
    /// `/proc/self/cmdline`.
    Cmdline,
    /// `/proc/cpuinfo`.
    Cpuinfo,
    /// `/proc/meminfo`.
    Meminfo,
    /// `/sys/devices/system/cpu/online` and `possible`.
    CpuList,
}

/// What the synthetic entries depend on.
pub struct SynthContext<'a> {
    /// The executable's guest path.
    pub exe: &'a [u8],
    /// The working directory.
    pub cwd: &'a [u8],
    /// The open descriptors and their paths.
    pub fds: &'a dyn Fn(i32) -> Option<Vec<u8>>,
    /// The open descriptor numbers.
    pub fd_list: &'a dyn Fn() -> Vec<i32>,
}

const DIRS: [&[u8]; 11] = [
    b"/dev",
    b"/proc",
    b"/proc/self",
    b"/proc/self/fd",
    b"/proc/sys",
    b"/proc/sys/vm",
    b"/sys",
    b"/sys/devices",
    b"/sys/devices/system",
    b"/sys/devices/system/cpu",
    b"/dev/shm",
];

/// The synthetic entry at `path` (a canonical guest path), if there is one.
pub fn lookup(path: &[u8], cx: &SynthContext<'_>) -> Option<Synth> {
    if DIRS.contains(&path) {
        return Some(Synth::Dir);
    }
    Some(match path {
        b"/dev/null" => Synth::Null,
        b"/dev/zero" => Synth::Zero,
        b"/dev/random" | b"/dev/urandom" => Synth::Random,
        b"/dev/stdin" => Synth::Symlink(b"/proc/self/fd/0".to_vec()),
        b"/dev/stdout" => Synth::Symlink(b"/proc/self/fd/1".to_vec()),
        b"/dev/stderr" => Synth::Symlink(b"/proc/self/fd/2".to_vec()),
        b"/dev/fd" => Synth::Symlink(b"/proc/self/fd".to_vec()),
        b"/proc/self/exe" => Synth::Symlink(cx.exe.to_vec()),
        b"/proc/self/root" => Synth::Symlink(b"/".to_vec()),
        b"/proc/self/cwd" => Synth::Symlink(cx.cwd.to_vec()),
        b"/proc/self/maps" => Synth::File(Generated::Maps),
        b"/proc/self/status" => Synth::File(Generated::Status),
        b"/proc/self/stat" => Synth::File(Generated::Stat),
        b"/proc/self/cmdline" => Synth::File(Generated::Cmdline),
        b"/proc/cpuinfo" => Synth::File(Generated::Cpuinfo),
        b"/proc/meminfo" => Synth::File(Generated::Meminfo),
        b"/sys/devices/system/cpu/online" | b"/sys/devices/system/cpu/possible" => {
            Synth::File(Generated::CpuList)
        }
        _ => {
            // /proc/self/fd/N: a link to what N was opened by. /proc/1 is /proc/self.
            if let Some(rest) = path.strip_prefix(b"/proc/1") {
                if rest.is_empty() {
                    return Some(Synth::Symlink(b"/proc/self".to_vec()));
                }
                return lookup(&[b"/proc/self", rest].concat(), cx);
            }
            let n = path.strip_prefix(b"/proc/self/fd/")?;
            let n: i32 = std::str::from_utf8(n).ok()?.parse().ok()?;
            let target = (cx.fds)(n)?;
            Synth::Symlink(target)
        }
    })
}

/// Whether `path` lies in a tree only the synthetic entries make up (`/proc`, `/sys`,
/// `/dev`): there, what is not synthetic does not exist.
pub fn owns(path: &[u8]) -> bool {
    [&b"/proc"[..], b"/sys", b"/dev"]
        .iter()
        .any(|p| path == *p || (path.starts_with(p) && path.get(p.len()) == Some(&b'/')))
}

/// The synthetic children of the directory `dir`: names and `DT_*` types.
pub fn children(dir: &[u8], cx: &SynthContext<'_>) -> Vec<(Vec<u8>, u8)> {
    let names: Vec<&[u8]> = match dir {
        b"/dev" => vec![
            b"null", b"zero", b"random", b"urandom", b"stdin", b"stdout", b"stderr", b"fd", b"shm",
        ],
        b"/proc" => vec![b"self", b"1", b"cpuinfo", b"meminfo", b"sys"],
        b"/proc/self" => vec![
            b"exe", b"root", b"cwd", b"fd", b"maps", b"status", b"stat", b"cmdline",
        ],
        b"/proc/sys" => vec![b"vm"],
        b"/sys" => vec![b"devices"],
        b"/sys/devices" => vec![b"system"],
        b"/sys/devices/system" => vec![b"cpu"],
        b"/sys/devices/system/cpu" => vec![b"online", b"possible"],
        b"/proc/self/fd" => {
            return (cx.fd_list)()
                .into_iter()
                .map(|n| (n.to_string().into_bytes(), libc::DT_LNK))
                .collect();
        }
        _ => vec![],
    };
    names
        .into_iter()
        .map(|name| {
            let path = if dir == b"/" {
                [b"/", name].concat()
            } else {
                [dir, b"/", name].concat()
            };
            let kind = match lookup(&path, cx) {
                Some(Synth::Dir) => libc::DT_DIR,
                Some(Synth::Symlink(_)) => libc::DT_LNK,
                Some(Synth::Null | Synth::Zero | Synth::Random) => libc::DT_CHR,
                _ => libc::DT_REG,
            };
            (name.to_vec(), kind)
        })
        .collect()
}
