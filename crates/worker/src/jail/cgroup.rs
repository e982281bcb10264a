//! A cgroup per instance process: its memory (guest memory plus the VMM's overhead),
//! its tasks and, optionally, its CPU time are limited, and a process that exceeds its
//! memory is killed by the kernel inside its own group, never the server.
//!
//! Both hierarchies are supported, as Firecracker's jailer does: cgroup v1 (one
//! hierarchy per controller, `/sys/fs/cgroup/{memory,pids,cpu}`) and v2 (one unified
//! hierarchy, `/sys/fs/cgroup` with `cgroup.controllers`). The instances' groups live
//! under a parent group `reap` in each.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Which cgroup hierarchy the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: a directory per controller under the mount root.
    V1(PathBuf),
    /// cgroup v2: one directory.
    V2(PathBuf),
}

/// The controllers an instance's group uses.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// Where instance groups are made: `reap` under the host's hierarchy.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    hierarchy: Hierarchy,
}

/// One instance's group.
#[derive(Debug)]
pub struct Cgroup {
    hierarchy: Hierarchy,
    /// The group's directories: one per controller (v1) or one (v2).
    dirs: Vec<PathBuf>,
}

fn io_err(path: &Path, what: &str) -> impl FnOnce(io::Error) -> io::Error {
    let path = path.display().to_string();
    let what = what.to_owned();
    move |e| io::Error::new(e.kind(), format!("{what} {path}: {e}"))
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(io_err(path, "cannot write"))
}

impl CgroupRoot {
    /// The hierarchy mounted at `/sys/fs/cgroup`, if any: v2 if it has
    /// `cgroup.controllers`, v1 if it has a `memory` and a `pids` controller.
    pub fn detect() -> Option<CgroupRoot> {
        Self::at(Path::new("/sys/fs/cgroup"))
    }

    /// The hierarchy mounted at `mount`, as [`CgroupRoot::detect`].
    pub fn at(mount: &Path) -> Option<CgroupRoot> {
        let hierarchy = if mount.join("cgroup.controllers").exists() {
            Hierarchy::V2(mount.to_path_buf())
        } else if mount.join("memory/tasks").exists() && mount.join("pids/tasks").exists() {
            Hierarchy::V1(mount.to_path_buf())
        } else {
            return None;
        };
        Some(CgroupRoot { hierarchy })
    }

    /// The hierarchy.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// Removes the empty groups under `reap` left by servers that are gone (named
    /// `PID-N` after their server's pid).
    pub fn remove_stale(&self) {
        let parents: Vec<PathBuf> = match &self.hierarchy {
            Hierarchy::V1(mount) => CONTROLLERS
                .iter()
                .map(|c| mount.join(c).join("reap"))
                .collect(),
            Hierarchy::V2(mount) => vec![mount.join("reap")],
        };
        for parent in parents {
            let Ok(entries) = fs::read_dir(&parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|n| n.split_once('-'))
                    .map(|(p, _)| p)
                else {
                    continue;
                };
                let alive = Path::new("/proc").join(pid).exists();
                if !alive && entry.path().is_dir() {
                    // Fails, harmlessly, if a process is still in it.
                    let _ = fs::remove_dir(entry.path());
                }
            }
        }
    }

    /// Makes the group `name` under `reap` (removing a stale one of that name).
    pub fn create(&self, name: &str) -> io::Result<Cgroup> {
        let dirs = match &self.hierarchy {
            Hierarchy::V1(mount) => CONTROLLERS
                .iter()
                .map(|c| mount.join(c))
                .filter(|d| d.exists())
                .map(|d| d.join("reap").join(name))
                .collect(),
            Hierarchy::V2(mount) => {
                let parent = mount.join("reap");
                enable_controllers(mount)?;
                fs::create_dir_all(&parent).map_err(io_err(&parent, "cannot create"))?;
                enable_controllers(&parent)?;
                vec![parent.join(name)]
            }
        };
        for dir in &dirs {
            // A group left by a process of an earlier server with this name.
            let _ = fs::remove_dir(dir);
            fs::create_dir_all(dir).map_err(io_err(dir, "cannot create the cgroup"))?;
        }
        Ok(Cgroup {
            hierarchy: self.hierarchy.clone(),
            dirs,
        })
    }
}

/// Lets the children of the v2 group `dir` use the controllers (those it has).
fn enable_controllers(dir: &Path) -> io::Result<()> {
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let path = dir.join("cgroup.subtree_control");
    write_file(&path, &wanted.join(" "))
}

impl Cgroup {
    fn dir_of(&self, controller: &str) -> Option<&Path> {
        match self.hierarchy {
            Hierarchy::V2(_) => self.dirs.first().map(PathBuf::as_path),
            Hierarchy::V1(_) => self
                .dirs
                .iter()
                .find(|d| {
                    d.parent()
                        .and_then(Path::parent)
                        .is_some_and(|c| c.ends_with(controller))
                })
                .map(PathBuf::as_path),
        }
    }

    /// The group's `cgroup.procs` files, open for writing: a process joins the group by
    /// writing `0` to each (see [`super::pre_exec`]).
    pub fn procs_files(&self) -> io::Result<Vec<File>> {
        self.dirs
            .iter()
            .map(|d| {
                let path = d.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path, "cannot open"))
            })
            .collect()
    }

    /// Limits the group's memory to `bytes` (v1: `memory.limit_in_bytes`; v2:
    /// `memory.max`, with swap off).
    pub fn set_memory_limit(&self, bytes: u64) -> io::Result<()> {
        let Some(dir) = self.dir_of("memory") else {
            return Err(io::Error::other("the cgroup has no memory controller"));
        };
        match self.hierarchy {
            Hierarchy::V1(_) => write_file(&dir.join("memory.limit_in_bytes"), &bytes.to_string()),
            Hierarchy::V2(_) => {
                write_file(&dir.join("memory.max"), &bytes.to_string())?;
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write_file(&swap, "0")?;
                }
                Ok(())
            }
        }
    }

    /// Limits the group's tasks (threads) to `n`.
    pub fn set_tasks_limit(&self, n: u32) -> io::Result<()> {
        let Some(dir) = self.dir_of("pids") else {
            return Err(io::Error::other("the cgroup has no pids controller"));
        };
        write_file(&dir.join("pids.max"), &n.to_string())
    }

    /// Limits the group's CPU time to `millicores` thousandths of a core.
    pub fn set_cpu_limit(&self, millicores: u32) -> io::Result<()> {
        let Some(dir) = self.dir_of("cpu") else {
            return Err(io::Error::other("the cgroup has no cpu controller"));
        };
        let period = 100_000u64;
        let quota = (u64::from(millicores) * period / 1000).max(1000);
        match self.hierarchy {
            Hierarchy::V1(_) => {
                write_file(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
                write_file(&dir.join("cpu.cfs_quota_us"), &quota.to_string())
            }
            Hierarchy::V2(_) => write_file(&dir.join("cpu.max"), &format!("{quota} {period}")),
        }
    }

    /// Whether the kernel's OOM killer has killed a process of the group.
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = self.dir_of("memory") else {
            return false;
        };
        let (file, key) = match self.hierarchy {
            Hierarchy::V1(_) => ("memory.oom_control", "oom_kill"),
            Hierarchy::V2(_) => ("memory.events", "oom_kill"),
        };
        fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .any(|(k, v)| k == key && v.trim() != "0")
    }

    /// The group's peak memory use, in bytes, if the kernel keeps it.
    pub fn memory_peak(&self) -> Option<u64> {
        let dir = self.dir_of("memory")?;
        let file = match self.hierarchy {
            Hierarchy::V1(_) => "memory.max_usage_in_bytes",
            Hierarchy::V2(_) => "memory.peak",
        };
        fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
    }

    /// Removes the group (its processes must have exited); retried briefly, as the
    /// kernel lets go of an exited process's group asynchronously.
    pub fn remove(&self) -> io::Result<()> {
        for dir in &self.dirs {
            let mut tries = 0;
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) if tries < 200 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(e) => return Err(io_err(dir, "cannot remove the cgroup")(e)),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_hierarchies_are_told_apart() {
        let dir = std::env::temp_dir().join(format!("reap-cg-{}", std::process::id()));
        let v1 = dir.join("v1");
        for c in ["memory", "pids"] {
            fs::create_dir_all(v1.join(c)).unwrap();
            fs::write(v1.join(c).join("tasks"), "").unwrap();
        }
        let v2 = dir.join("v2");
        fs::create_dir_all(&v2).unwrap();
        fs::write(v2.join("cgroup.controllers"), "cpu memory pids").unwrap();
        assert_eq!(
            CgroupRoot::at(&v1).unwrap().hierarchy(),
            &Hierarchy::V1(v1.clone())
        );
        assert_eq!(
            CgroupRoot::at(&v2).unwrap().hierarchy(),
            &Hierarchy::V2(v2.clone())
        );
        assert!(CgroupRoot::at(&dir).is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
