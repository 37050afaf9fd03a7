//! Failpoints: named places in the store where a test makes a member crash, sleep or log, so
//! it can show what a crash at exactly that point leaves behind (etcd's robustness tests do the
//! same with gofail).
//!
//! The points exist only in builds with the `failpoints` feature (`cargo build -F failpoints`;
//! the workspace's test builds have it). Without it [`failpoint!`] expands to nothing and none
//! of this module is compiled. They are armed the way gofail arms etcd's:
//! - `GOFAIL_FAILPOINTS="name=term;name=term"` in the environment at start;
//! - over HTTP on the address in `GOFAIL_HTTP` (e.g. `127.0.0.1:22381`): `PUT /name` with the
//!   term as the body (204, or 400 for a bad term or an unknown name), `GET /name` (the term),
//!   `GET /name/count` (how often the point was hit while armed), `DELETE /name` (disarms),
//!   `GET /` (every point as `name=term` lines).
//!
//! A term is `[P%][N*]action`: `panic` (the process dies at once, by SIGKILL to itself, so
//! nothing more is written or flushed: as `kill -9` at that point), `sleep(MS)` (the thread
//! blocks), `print` (logs the hit) or `off`; `N*` makes it act on the next N hits only, `P%` on
//! that share of hits. gofail's `return(...)` and `->` chains have no meaning here and are
//! refused.

/// Marks failpoint `$name` (one of [`POINTS`]) here; nothing without the `failpoints` feature.
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::hit($name);
    };
}
pub(crate) use failpoint;

/// Every failpoint, with where it is.
pub const POINTS: [(&str, &str); 10] = [
    (
        "raftBeforeSave",
        "Raft log append: before the entries are written",
    ),
    (
        "raftAfterSave",
        "Raft log append: after the fsync, before raft is told the entries are durable",
    ),
    (
        "raftBeforeApply",
        "state machine: before a batch of committed entries is applied",
    ),
    (
        "raftAfterApply",
        "state machine: after a batch is applied, before its results are returned",
    ),
    (
        "raftBeforeSaveSnap",
        "snapshot build: before the state is dumped",
    ),
    (
        "raftDuringSaveSnap",
        "snapshot build: half way through writing the dump file",
    ),
    (
        "raftAfterSaveSnap",
        "snapshot build: after the snapshot is made current, before raft purges the log",
    ),
    (
        "raftBeforeApplySnap",
        "snapshot install: after the snapshot was received, before it is installed",
    ),
    (
        "raftDuringApplySnap",
        "snapshot install: the old state cleared and the new data written, not yet its \
         applied index",
    ),
    (
        "raftAfterApplySnap",
        "snapshot install: installed, before raft is told",
    ),
];

#[cfg(feature = "failpoints")]
pub use armed::*;

/// Arms the points `GOFAIL_FAILPOINTS` names and serves `GOFAIL_HTTP` until `stop`. A build
/// without failpoints ignores both, with a warning.
pub async fn from_env(stop: tokio_util::sync::CancellationToken) -> Result<(), String> {
    let spec = std::env::var("GOFAIL_FAILPOINTS").ok();
    let http = std::env::var("GOFAIL_HTTP").ok();
    #[cfg(feature = "failpoints")]
    {
        if let Some(spec) = spec {
            arm_all(&spec).map_err(|e| format!("GOFAIL_FAILPOINTS: {e}"))?;
        }
        if let Some(addr) = http {
            let a: std::net::SocketAddr = addr
                .parse()
                .map_err(|_| format!("GOFAIL_HTTP: {addr:?} is not host:port"))?;
            serve(a, stop)
                .await
                .map_err(|e| format!("GOFAIL_HTTP: listening on {a}: {e}"))?;
        }
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = stop;
        if spec.is_some() || http.is_some() {
            tracing::warn!(
                "GOFAIL_FAILPOINTS and GOFAIL_HTTP are ignored: this build has no failpoints \
                 (build with --features failpoints)"
            );
        }
    }
    Ok(())
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use axum::Router;
    use axum::extract::Path;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use tokio_util::sync::CancellationToken;

    use super::POINTS;

    /// What an armed failpoint does when hit.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub enum Action {
        /// Nothing.
        Off,
        /// The process dies at once (SIGKILL to itself).
        Panic,
        /// The hitting thread sleeps.
        Sleep(Duration),
        /// The hit is logged.
        Print,
    }

    /// A parsed term.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Term {
        /// As given.
        pub text: String,
        /// The share of hits it acts on, in percent.
        pub percent: f64,
        /// Hits it still acts on (none: every one).
        pub left: Option<u64>,
        /// What it does.
        pub action: Action,
    }

    impl std::str::FromStr for Term {
        type Err = String;

        fn from_str(text: &str) -> Result<Term, String> {
            let t = text.trim();
            if t.contains("->") {
                return Err(format!("{t:?}: chains (->) are not supported"));
            }
            let (percent, rest) = match t.split_once('%') {
                Some((p, rest)) => {
                    let p: f64 = p
                        .parse()
                        .map_err(|_| format!("{t:?}: {p:?} is not a percentage"))?;
                    if !(0.0..=100.0).contains(&p) {
                        return Err(format!("{t:?}: {p}% is not between 0 and 100"));
                    }
                    (p, rest)
                }
                None => (100.0, t),
            };
            let (left, rest) = match rest.split_once('*') {
                Some((n, rest)) => (
                    Some(
                        n.parse::<u64>()
                            .map_err(|_| format!("{t:?}: {n:?} is not a count"))?,
                    ),
                    rest,
                ),
                None => (None, rest),
            };
            let action = match rest {
                "off" => Action::Off,
                "panic" => Action::Panic,
                "print" => Action::Print,
                _ => match rest
                    .strip_prefix("sleep(")
                    .and_then(|r| r.strip_suffix(')'))
                {
                    Some(ms) => {
                        Action::Sleep(Duration::from_millis(ms.parse().map_err(|_| {
                            format!("{t:?}: sleep takes milliseconds, not {ms:?}")
                        })?))
                    }
                    None if rest.starts_with("return") => {
                        return Err(format!(
                            "{t:?}: return(...) has no meaning in keelson-store's failpoints"
                        ));
                    }
                    None => {
                        return Err(format!(
                            "{t:?}: unknown action {rest:?} (off, panic, print, sleep(MS))"
                        ));
                    }
                },
            };
            Ok(Term {
                text: t.to_string(),
                percent,
                left,
                action,
            })
        }
    }

    /// Whether any point is armed: the only cost of a point nobody armed is this load.
    static ANY: AtomicBool = AtomicBool::new(false);
    /// The armed points and their hits.
    static TABLE: Mutex<BTreeMap<&'static str, (Term, u64)>> = Mutex::new(BTreeMap::new());

    fn table() -> std::sync::MutexGuard<'static, BTreeMap<&'static str, (Term, u64)>> {
        TABLE.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn known(name: &str) -> Result<&'static str, String> {
        POINTS
            .iter()
            .map(|(n, _)| *n)
            .find(|n| *n == name)
            .ok_or_else(|| format!("no failpoint named {name:?}"))
    }

    /// Arms point `name` with `term` (`off` disarms it but keeps its count).
    pub fn arm(name: &str, term: &str) -> Result<(), String> {
        let name = known(name)?;
        let term: Term = term.parse()?;
        let mut t = table();
        let hits = t.get(name).map_or(0, |(_, h)| *h);
        t.insert(name, (term, hits));
        ANY.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Disarms point `name`.
    pub fn disarm(name: &str) -> Result<(), String> {
        let name = known(name)?;
        table().remove(name);
        Ok(())
    }

    /// Point `name`'s term (`off` when not armed) and hits so far.
    pub fn status(name: &str) -> Result<(String, u64), String> {
        let name = known(name)?;
        Ok(table()
            .get(name)
            .map_or(("off".into(), 0), |(t, h)| (t.text.clone(), *h)))
    }

    /// Arms the points in `spec` (`name=term;name=term`, as `GOFAIL_FAILPOINTS`): all of them,
    /// or none if one is bad.
    pub fn arm_all(spec: &str) -> Result<(), String> {
        let mut parsed = Vec::new();
        for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, term) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not name=term"))?;
            let name = known(name.trim())?;
            term.parse::<Term>()?;
            parsed.push((name, term));
        }
        for (name, term) in parsed {
            arm(name, term)?;
        }
        Ok(())
    }

    /// Called at point `name`: does what its term says.
    pub fn hit(name: &'static str) {
        if !ANY.load(Ordering::Relaxed) {
            return;
        }
        let action = {
            let mut t = table();
            let Some((term, hits)) = t.get_mut(name) else {
                return;
            };
            if term.left == Some(0)
                || (term.percent < 100.0 && rand::random::<f64>() * 100.0 >= term.percent)
            {
                return;
            }
            *hits += 1;
            if let Some(n) = &mut term.left {
                *n -= 1;
            }
            term.action
        };
        match action {
            Action::Off => {}
            Action::Print => tracing::warn!(failpoint = name, "failpoint hit"),
            Action::Sleep(d) => std::thread::sleep(d),
            Action::Panic => crash(name),
        }
    }

    /// Dies at once, as `kill -9` would.
    fn crash(name: &str) -> ! {
        eprintln!("failpoint {name}: crashing (SIGKILL)");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGKILL);
        // Not reached: SIGKILL cannot be caught.
        std::process::abort()
    }

    /// Serves the gofail HTTP protocol on `addr` until `stop`.
    pub async fn serve(addr: SocketAddr, stop: CancellationToken) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let app = Router::new()
            .route("/", axum::routing::get(list))
            .route(
                "/{name}",
                axum::routing::get(get_one).put(put_one).delete(delete_one),
            )
            .route("/{name}/count", axum::routing::get(count));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(())
    }

    async fn list() -> String {
        let mut out = String::new();
        for (name, _) in POINTS {
            let (term, _) = status(name).unwrap_or_default();
            out.push_str(&format!("{name}={term}\n"));
        }
        out
    }

    async fn get_one(Path(name): Path<String>) -> Response {
        match status(&name) {
            Ok((term, _)) => format!("{term}\n").into_response(),
            Err(e) => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
        }
    }

    async fn count(Path(name): Path<String>) -> Response {
        match status(&name) {
            Ok((_, hits)) => format!("{hits}\n").into_response(),
            Err(e) => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
        }
    }

    async fn put_one(Path(name): Path<String>, body: String) -> Response {
        match arm(&name, &body) {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        }
    }

    async fn delete_one(Path(name): Path<String>) -> Response {
        match disarm(&name) {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn terms_parse_as_gofail_writes_them() {
            let t: Term = "panic".parse().unwrap();
            assert_eq!((t.percent, t.left, t.action), (100.0, None, Action::Panic));
            let t: Term = "25%3*sleep(40)".parse().unwrap();
            assert_eq!(
                (t.percent, t.left, t.action),
                (25.0, Some(3), Action::Sleep(Duration::from_millis(40)))
            );
            assert_eq!("off".parse::<Term>().unwrap().action, Action::Off);
            for bad in [
                "return(true)",
                "panic->off",
                "sleep(x)",
                "crash",
                "150%panic",
                "x*panic",
            ] {
                assert!(bad.parse::<Term>().is_err(), "{bad} was accepted");
            }
        }

        #[test]
        fn a_counted_term_acts_only_that_often() {
            // A point no other test arms: the table is process-wide.
            arm("raftAfterApplySnap", "2*print").unwrap();
            for _ in 0..5 {
                hit("raftAfterApplySnap");
            }
            assert_eq!(status("raftAfterApplySnap").unwrap(), ("2*print".into(), 2));
            disarm("raftAfterApplySnap").unwrap();
            assert_eq!(status("raftAfterApplySnap").unwrap(), ("off".into(), 0));
            assert!(arm("noSuchPoint", "panic").is_err());
            // A bad part arms nothing.
            assert!(arm_all("raftBeforeApplySnap=print;raftAfterSave=bogus").is_err());
            assert_eq!(status("raftBeforeApplySnap").unwrap().0, "off");
        }
    }
}
