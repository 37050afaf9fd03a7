//! A `keelson <component>` process for end-to-end tests: started against a test cluster,
//! killed on drop (printing the end of its log when the test failed).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::harness::{ApiCluster, free_port};

/// Fast leader-election timing for handover tests.
pub const FAST_LEASE: &[&str] = &[
    "--leader-elect-lease-duration=4s",
    "--leader-elect-renew-deadline=3s",
    "--leader-elect-retry-period=500ms",
];

/// One component process.
pub struct Component {
    pub child: Option<Child>,
    pub log: PathBuf,
    /// The /healthz and /metrics port.
    pub port: u16,
}

impl Component {
    /// Starts `keelson <component>` with the cluster's admin kubeconfig and `extra` flags.
    pub fn start(c: &ApiCluster, component: &str, name: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let mut args = vec![
            format!("--kubeconfig={}", c.kubeconfig().display()),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={port}"),
            "--kube-api-qps=500".to_string(),
            "--kube-api-burst=1000".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(c, component, name, &args, port)
    }

    /// Starts `keelson <component> <args>`, logging to `<name>.log`; `port` is its HTTPS port.
    pub fn spawn(c: &ApiCluster, component: &str, name: &str, args: &[String], port: u16) -> Self {
        let log = c.dir.path().join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_keelson"))
            .arg(component)
            .args(args)
            .env(
                "RUST_LOG",
                "info,keelson_client=debug,keelson_scheduler=debug,keelson_node=debug",
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            log,
            port,
        }
    }

    /// GET a path of the component's HTTPS health/metrics server.
    pub fn get(&self, path: &str) -> String {
        let script = format!(
            "import ssl,urllib.request\nctx=ssl._create_unverified_context()\nprint(urllib.request.urlopen('https://127.0.0.1:{}{path}',context=ctx).read().decode())",
            self.port
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        c.wait().unwrap()
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- {} (last lines) ---", self.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
