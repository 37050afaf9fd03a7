//! Container cgroups: memory and CPU limits through cgroup v1 (the `memory` and `cpu`
//! hierarchies) or cgroup v2 (the unified hierarchy), whichever the host has.

use std::path::{Path, PathBuf};

/// Where container cgroups are made.
#[derive(Debug, Clone)]
pub enum Cgroups {
    /// cgroup v1: the memory and cpu hierarchies' base directories.
    V1 {
        /// memory hierarchy base.
        memory: PathBuf,
        /// cpu hierarchy base.
        cpu: PathBuf,
    },
    /// cgroup v2: the base directory in the unified hierarchy.
    V2(PathBuf),
    /// No usable cgroups (limits are not enforced).
    None,
}

fn mounts() -> Vec<(String, String, String)> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| (f[1].to_string(), f[2].to_string(), f[3].to_string()))
        })
        .collect()
}

impl Cgroups {
    /// Finds the host's hierarchies; container cgroups go under `<mount>/<root>/<node>`.
    pub fn detect(root: &str, node: &str) -> Self {
        let ms = mounts();
        let v1 = |ctrl: &str| {
            ms.iter()
                .find(|(_, t, o)| t == "cgroup" && o.split(',').any(|x| x == ctrl))
                .map(|(m, _, _)| PathBuf::from(m).join(root).join(node))
        };
        if let (Some(memory), Some(cpu)) = (v1("memory"), v1("cpu")) {
            let ok =
                std::fs::create_dir_all(&memory).is_ok() && std::fs::create_dir_all(&cpu).is_ok();
            if ok {
                return Cgroups::V1 { memory, cpu };
            }
        }
        if let Some((m, _, _)) = ms.iter().find(|(_, t, _)| t == "cgroup2") {
            let m = PathBuf::from(m);
            let has = std::fs::read_to_string(m.join("cgroup.controllers")).unwrap_or_default();
            if has.split_whitespace().any(|c| c == "memory") {
                let _ = std::fs::write(m.join("cgroup.subtree_control"), "+memory +cpu");
                let mid = m.join(root);
                let base = mid.join(node);
                if std::fs::create_dir_all(&base).is_ok() {
                    let _ = std::fs::write(mid.join("cgroup.subtree_control"), "+memory +cpu");
                    let _ = std::fs::write(base.join("cgroup.subtree_control"), "+memory +cpu");
                    return Cgroups::V2(base);
                }
            }
        }
        Cgroups::None
    }

    /// Creates the cgroup `rel` with the limits; returns its directories (one per hierarchy).
    pub fn create(
        &self,
        rel: &str,
        memory_limit: Option<i64>,
        cpu_limit_milli: Option<i64>,
        cpu_request_milli: Option<i64>,
    ) -> Result<Vec<PathBuf>, String> {
        let w = |p: PathBuf, v: String| {
            std::fs::write(&p, &v).map_err(|e| format!("{} = {v}: {e}", p.display()))
        };
        match self {
            Cgroups::None => Ok(Vec::new()),
            Cgroups::V1 { memory, cpu } => {
                let (m, c) = (memory.join(rel), cpu.join(rel));
                for d in [&m, &c] {
                    std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
                }
                if let Some(l) = memory_limit {
                    w(m.join("memory.limit_in_bytes"), l.to_string())?;
                    let _ = std::fs::write(m.join("memory.memsw.limit_in_bytes"), l.to_string());
                }
                if let Some(l) = cpu_limit_milli {
                    w(c.join("cpu.cfs_period_us"), "100000".into())?;
                    w(c.join("cpu.cfs_quota_us"), (l * 100).max(1000).to_string())?;
                }
                if let Some(r) = cpu_request_milli {
                    w(c.join("cpu.shares"), (r * 1024 / 1000).max(2).to_string())?;
                }
                Ok(vec![m, c])
            }
            Cgroups::V2(base) => {
                let d = base.join(rel);
                std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
                if let Some(l) = memory_limit {
                    w(d.join("memory.max"), l.to_string())?;
                    let _ = std::fs::write(d.join("memory.swap.max"), "0");
                }
                if let Some(l) = cpu_limit_milli {
                    w(d.join("cpu.max"), format!("{} 100000", (l * 100).max(1000)))?;
                }
                if let Some(r) = cpu_request_milli {
                    let weight =
                        (1 + ((r * 1024 / 1000).max(2) - 2) * 9999 / 262142).clamp(1, 10000);
                    w(d.join("cpu.weight"), weight.to_string())?;
                }
                Ok(vec![d])
            }
        }
    }

    /// The parent directories of `rel` (for a pod's cgroups), per hierarchy.
    pub fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        match self {
            Cgroups::None => Vec::new(),
            Cgroups::V1 { memory, cpu } => vec![memory.join(rel), cpu.join(rel)],
            Cgroups::V2(base) => vec![base.join(rel)],
        }
    }

    /// The node's base directories.
    pub fn bases(&self) -> Vec<PathBuf> {
        self.dirs("")
    }
}

/// PIDs in a cgroup directory.
pub fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether the kernel OOM-killed something in the cgroup.
pub fn oom_killed(dirs: &[PathBuf]) -> bool {
    dirs.iter().any(|d| {
        ["memory.oom_control", "memory.events"].iter().any(|f| {
            std::fs::read_to_string(d.join(f))
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
                })
        })
    })
}

/// Kills everything in the cgroup directories and removes them, deepest first.
pub fn remove_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        let pids = procs(dir);
        for p in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if std::fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
