//! `keelson container-init`: the process that turns a command into a container. Stage one runs
//! outside: it joins the container's cgroups, makes new mount, UTS, IPC and PID namespaces (and
//! joins the pod's network namespace), builds the container's root from the host's directories
//! plus the pod's volumes, and starts stage two, which becomes PID 1 of the new PID namespace,
//! mounts `/proc`, changes root and executes the command. Stage one stays outside, forwarding
//! signals to PID 1 and exiting with its status (128 + signal when it was killed).

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;

/// What stage one is told.
#[derive(Debug, Default)]
struct Plan {
    hostname: String,
    rootfs: PathBuf,
    cwd: String,
    tmp: Option<PathBuf>,
    netns: Option<PathBuf>,
    cgroups: Vec<PathBuf>,
    binds: Vec<(PathBuf, String, bool)>,
    command: Vec<OsString>,
}

fn fail(msg: String) -> ! {
    eprintln!("container-init: {msg}");
    std::process::exit(128)
}

fn parse(args: Vec<OsString>) -> Result<Plan, String> {
    let mut p = Plan {
        cwd: "/".into(),
        ..Default::default()
    };
    let mut it = args.into_iter();
    let next = |it: &mut std::vec::IntoIter<OsString>, flag: &str| {
        it.next()
            .ok_or_else(|| format!("{flag} needs a value"))
            .map(|v| v.to_string_lossy().into_owned())
    };
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--hostname") => p.hostname = next(&mut it, "--hostname")?,
            Some("--rootfs") => p.rootfs = next(&mut it, "--rootfs")?.into(),
            Some("--cwd") => p.cwd = next(&mut it, "--cwd")?,
            Some("--tmp") => p.tmp = Some(next(&mut it, "--tmp")?.into()),
            Some("--netns") => p.netns = Some(next(&mut it, "--netns")?.into()),
            Some("--cgroup") => p.cgroups.push(next(&mut it, "--cgroup")?.into()),
            Some("--bind") => {
                let src = next(&mut it, "--bind")?;
                let dst = next(&mut it, "--bind")?;
                let mode = next(&mut it, "--bind")?;
                p.binds.push((src.into(), dst, mode == "ro"));
            }
            Some("--") => {
                p.command = it.collect();
                break;
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    if p.command.is_empty() {
        return Err("no command".into());
    }
    if p.rootfs.as_os_str().is_empty() {
        return Err("--rootfs is required".into());
    }
    Ok(p)
}

fn bind(src: &Path, dst: &Path, read_only: bool) -> Result<(), String> {
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("bind {} on {}: {e}", src.display(), dst.display()))?;
    if read_only {
        mount(
            None::<&str>,
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| format!("remount {} read-only: {e}", dst.display()))?;
    }
    Ok(())
}

/// Whether a top-level directory of the host is bind-mounted into every container's root
/// (the rest get a private `/proc`, `/tmp` and `/run`, or are left out).
pub(crate) fn shared_from_host(top: &str) -> bool {
    !matches!(top, "" | "proc" | "tmp" | "run" | "lost+found")
}

/// Builds the container's root: a tmpfs holding the host's top-level directories (bind
/// mounts), a private /tmp, an empty /run, and the volumes.
fn build_root(p: &Plan) -> Result<(), String> {
    let root = &p.rootfs;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=755"),
    )
    .map_err(|e| format!("tmpfs on {}: {e}", root.display()))?;
    let mut from_host = Vec::new();
    let entries = std::fs::read_dir("/").map_err(|e| format!("read /: {e}"))?;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        if !shared_from_host(n) {
            continue;
        }
        let target = root.join(n);
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_symlink() {
            if let Ok(link) = std::fs::read_link(e.path()) {
                let _ = std::os::unix::fs::symlink(link, &target);
            }
        } else if ft.is_dir() {
            std::fs::create_dir(&target).map_err(|e| format!("{}: {e}", target.display()))?;
            bind(&e.path(), &target, false)?;
            from_host.push(n.to_string());
        }
    }
    for d in ["proc", "tmp", "run"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| format!("{d}: {e}"))?;
    }
    if let Some(tmp) = &p.tmp {
        bind(tmp, &root.join("tmp"), false)?;
    }
    for (src, dst, ro) in &p.binds {
        let rel = dst.trim_start_matches('/');
        let target = root.join(rel);
        if !target.exists() {
            let top = rel.split('/').next().unwrap_or("");
            if from_host.iter().any(|h| h == top) {
                return Err(format!(
                    "mountPath {dst:?} does not exist: the process runtime shares the host's \
                     directories and does not create paths inside them"
                ));
            }
            if src.is_dir() {
                std::fs::create_dir_all(&target)
            } else {
                target
                    .parent()
                    .map(std::fs::create_dir_all)
                    .unwrap_or(Ok(()))
                    .and_then(|_| std::fs::write(&target, b""))
            }
            .map_err(|e| format!("{}: {e}", target.display()))?;
        }
        bind(src, &target, *ro)?;
    }
    Ok(())
}

/// Stage one (see the module doc). Never returns.
fn stage_one(args: Vec<OsString>) -> ! {
    let p = parse(args).unwrap_or_else(|e| fail(e));
    let me = std::process::id().to_string();
    for cg in &p.cgroups {
        if let Err(e) = std::fs::write(cg.join("cgroup.procs"), &me) {
            fail(format!("join cgroup {}: {e}", cg.display()));
        }
    }
    if let Some(ns) = &p.netns {
        let f = std::fs::File::open(ns).unwrap_or_else(|e| fail(format!("{}: {e}", ns.display())));
        setns(f, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| fail(format!("setns net: {e}")));
    }
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWPID,
    )
    .unwrap_or_else(|e| fail(format!("unshare: {e}")));
    if !p.hostname.is_empty() {
        nix::unistd::sethostname(&p.hostname).unwrap_or_else(|e| fail(format!("sethostname: {e}")));
    }
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .unwrap_or_else(|e| fail(format!("make / private: {e}")));
    build_root(&p).unwrap_or_else(|e| fail(e));
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCHLD,
    ] {
        mask.add(s);
    }
    mask.thread_block()
        .unwrap_or_else(|e| fail(format!("block signals: {e}")));
    let fd = SignalFd::new(&mask).unwrap_or_else(|e| fail(format!("signalfd: {e}")));
    let mut child = Command::new("/proc/self/exe")
        .arg("container-init")
        .arg("--stage2")
        .arg(&p.rootfs)
        .arg(&p.cwd)
        .arg("--")
        .args(&p.command)
        .spawn()
        .unwrap_or_else(|e| fail(format!("start: {e}")));
    // No threads here: a process that unshared its PID namespace cannot make any. SIGCHLD
    // arrives through the signalfd like the signals to forward.
    let pid = Pid::from_raw(child.id() as i32);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            std::process::exit(
                status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(9)),
            );
        }
        if let Ok(Some(info)) = fd.read_signal()
            && let Ok(sig) = Signal::try_from(info.ssi_signo as i32)
            && sig != Signal::SIGCHLD
        {
            let _ = kill(pid, sig);
        }
    }
}

/// Stage two: PID 1 of the container. Never returns.
fn stage_two(args: Vec<OsString>) -> ! {
    let mut it = args.into_iter();
    let (Some(root), Some(cwd), Some(_dashes)) = (it.next(), it.next(), it.next()) else {
        fail("stage2: bad arguments".into())
    };
    let root = PathBuf::from(root);
    mount(
        Some("proc"),
        &root.join("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .unwrap_or_else(|e| fail(format!("mount /proc: {e}")));
    nix::unistd::chroot(&root).unwrap_or_else(|e| fail(format!("chroot: {e}")));
    let cwd = PathBuf::from(cwd);
    if std::env::set_current_dir(&cwd).is_err() {
        let _ = std::fs::create_dir_all(&cwd);
        std::env::set_current_dir(&cwd)
            .unwrap_or_else(|e| fail(format!("chdir {}: {e}", cwd.display())));
    }
    let cmd: Vec<OsString> = it.collect();
    let Some((prog, rest)) = cmd.split_first() else {
        fail("no command".into())
    };
    let err = Command::new(prog).args(rest).exec();
    eprintln!("exec {prog:?}: {err}");
    std::process::exit(127)
}

/// `keelson container-init ARGS...`: runs a container (see the module doc). Never returns.
pub fn main(args: Vec<OsString>) -> ! {
    if args.first().and_then(|a| a.to_str()) == Some("--stage2") {
        stage_two(args.into_iter().skip(1).collect())
    }
    stage_one(args)
}
