//! `/exec/{namespace}/{pod}/{container}` on the kubelet API: a command run in a container over a
//! WebSocket with Kubernetes' channel protocol (`v5.channel.k8s.io`, `v4.channel.k8s.io`):
//! every binary message starts with its stream (0 stdin, 1 stdout, 2 stderr, 3 the final
//! Status, 4 terminal resize); in v5 the client closes stdin with `[255, 0]`. The exit code is
//! reported in the Status as upstream does (`NonZeroExitCode`, cause `ExitCode`).

use std::process::Stdio;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::runtime::ContainerHandle;

/// The channel protocols served, best first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// What the query asked for.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ExecQuery {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Attach stdin.
    pub stdin: bool,
    /// Attach stdout.
    pub stdout: bool,
    /// Attach stderr.
    pub stderr: bool,
    /// A terminal was asked for (served as plain pipes, stderr joined to stdout).
    pub tty: bool,
}

impl ExecQuery {
    /// Parses an exec query string (`command` repeats and is required).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let q = Self::parse_streams(raw)?;
        if q.command.is_empty() {
            return Err("you must specify at least 1 command".into());
        }
        Ok(q)
    }

    /// Parses the stream flags (and any `command`) of an exec or attach query string.
    pub fn parse_streams(raw: &str) -> Result<Self, String> {
        let mut q = ExecQuery::default();
        let on = |v: &str| matches!(v, "1" | "true" | "True");
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            match k.as_ref() {
                "command" => q.command.push(v.into_owned()),
                "input" | "stdin" => q.stdin = on(&v),
                "output" | "stdout" => q.stdout = on(&v),
                "error" | "stderr" => q.stderr = on(&v),
                "tty" => q.tty = on(&v),
                _ => {}
            }
        }
        if !q.stdin && !q.stdout && !q.stderr {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        Ok(q)
    }
}

/// The Status sent on channel 3 when the command ends.
pub fn exit_status(code: i32, cmd: &[String]) -> serde_json::Value {
    if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}
        })
    }
}

fn failure(message: String) -> serde_json::Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"})
}

/// Upgrades to a WebSocket and runs the command (`attach` false) or attaches to the
/// container's own streams (`attach` true; `stdin_once` is the container's `stdinOnce`).
pub fn serve(
    ws: WebSocketUpgrade,
    handle: Arc<dyn ContainerHandle>,
    q: ExecQuery,
    attach: bool,
    stdin_once: bool,
) -> Response {
    let ws = ws.protocols(PROTOCOLS);
    let Some(proto) = ws.selected_protocol().and_then(|p| p.to_str().ok()) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("requested protocol(s) are not supported; supports {PROTOCOLS:?}"),
        )
            .into_response();
    };
    let v5 = proto == PROTOCOLS[0];
    if attach {
        ws.on_upgrade(move |socket| run_attach(socket, handle, q, v5, stdin_once))
    } else {
        ws.on_upgrade(move |socket| run(socket, handle, q, v5))
    }
}

/// Attach: the container's output as it is written, the client's input to its stdin, until
/// the container exits or the client leaves. With `stdinOnce` the container's stdin closes when
/// this client closes its stdin (v5) or leaves, as upstream: `kubectl run -i --rm` relies on it.
async fn run_attach(
    socket: WebSocket,
    handle: Arc<dyn ContainerHandle>,
    q: ExecQuery,
    v5: bool,
    stdin_once: bool,
) {
    let (mut tx, mut rx) = socket.split();
    let Some(io) = handle.attach() else {
        let mut frame = vec![3u8];
        frame.extend_from_slice(
            failure("container is not running".into())
                .to_string()
                .as_bytes(),
        );
        let _ = tx.send(Message::Binary(frame.into())).await;
        let _ = tx.send(Message::Close(Some(normal_close()))).await;
        await_close(&mut rx).await;
        return;
    };
    let mut output = io.output;
    let stdin = io.stdin.filter(|_| q.stdin);
    let terminal = io.tty.filter(|_| q.tty);
    // Closing a terminal's stdin hangs the terminal up, as containerd does: its shell sees
    // the end and exits.
    let hangup = io.hangup.filter(|_| stdin.is_some());
    let mut exited = handle.exited();
    let ended = async move {
        let _ = exited.wait_for(Option::is_some).await.map(|_| ());
    };
    tokio::pin!(ended);
    // The client frames are read in this block only, so `rx` is free for the closing handshake.
    {
        let close_stdin = async || {
            if let Some(s) = &stdin {
                *s.lock().await = None;
            }
            if let Some(h) = &hangup {
                h.cancel();
            }
        };
        let input = async {
            while let Some(data) = next_frame(&mut rx).await {
                match data.first() {
                    Some(0) => {
                        if let Some(s) = &stdin {
                            let mut g = s.lock().await;
                            if let Some(w) = g.as_mut()
                                && w.write_all(&data[1..]).await.is_err()
                            {
                                *g = None;
                            }
                        }
                    }
                    Some(4) => {
                        if let Some(path) = &terminal {
                            resize(path, &data[1..]).await;
                        }
                    }
                    // v5's stdin close: without stdinOnce the container's stdin stays open
                    // for other attachers.
                    Some(255) if v5 && data.get(1) == Some(&0) && stdin_once => close_stdin().await,
                    _ => {}
                }
            }
            if stdin_once {
                close_stdin().await;
            }
        };
        tokio::pin!(input);
        let wanted = |chan: u8| (chan == 1 && q.stdout) || (chan == 2 && (q.stderr || q.tty));
        let frame = |chan: u8, bytes: &[u8]| {
            let mut frame = Vec::with_capacity(bytes.len() + 1);
            frame.push(if q.tty { 1 } else { chan });
            frame.extend_from_slice(bytes);
            Message::Binary(frame.into())
        };
        loop {
            tokio::select! {
                // Output first: what the container wrote before it ended is sent before the end.
                biased;
                chunk = output.recv() => match chunk {
                    Ok((chan, bytes)) => {
                        if wanted(chan) && tx.send(frame(chan, &bytes)).await.is_err() {
                            // The client is gone.
                            if stdin_once {
                                close_stdin().await;
                            }
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                },
                _ = &mut ended => {
                    // Whatever is still queued was written before the exit.
                    while let Ok((chan, bytes)) = output.try_recv() {
                        if wanted(chan) && tx.send(frame(chan, &bytes)).await.is_err() {
                            // The client is gone.
                            if stdin_once {
                                close_stdin().await;
                            }
                            return;
                        }
                    }
                    break;
                }
                _ = &mut input => return,
            }
        }
    }
    let mut frame = vec![3u8];
    frame.extend_from_slice(exit_status(0, &[]).to_string().as_bytes());
    let _ = tx.send(Message::Binary(frame.into())).await;
    let _ = tx.send(Message::Close(Some(normal_close()))).await;
    await_close(&mut rx).await;
}

/// After our Close: reads (and drops) what the client still sends until its Close, at most 2 s.
/// Closing a socket with unread data makes the kernel reset the connection, and a reset can
/// lose the status and Close frames still on their way to the client.
async fn await_close(rx: &mut futures::stream::SplitStream<WebSocket>) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(m)) = rx.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// The client's next binary frame; `None` once it closed or failed.
async fn next_frame(rx: &mut futures::stream::SplitStream<WebSocket>) -> Option<Vec<u8>> {
    while let Some(Ok(msg)) = rx.next().await {
        match msg {
            Message::Binary(b) => return Some(b.to_vec()),
            Message::Close(_) => return None,
            _ => {}
        }
    }
    None
}

/// A normal closure (1000): clients read it as the end of every stream.
fn normal_close() -> axum::extract::ws::CloseFrame {
    axum::extract::ws::CloseFrame {
        code: 1000,
        reason: "".into(),
    }
}

async fn run(socket: WebSocket, handle: Arc<dyn ContainerHandle>, q: ExecQuery, v5: bool) {
    let (mut tx, mut rx) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if tx.send(Message::Binary(frame.into())).await.is_err() {
                break;
            }
        }
        let _ = tx.send(Message::Close(Some(normal_close()))).await;
    });
    // A terminal: the command runs on a pseudo-terminal as its session's controlling terminal.
    let cmdline: Vec<String> = if q.tty {
        ["setsid", "-c"]
            .iter()
            .map(|s| s.to_string())
            .chain(q.command.iter().cloned())
            .collect()
    } else {
        q.command.clone()
    };
    let status = match handle.exec_command(&cmdline) {
        // Nothing to run (hollow): the command "succeeds" with no output.
        None => exit_status(0, &q.command),
        Some(cmd) => match spawn(cmd, &q) {
            Err(e) => failure(format!("exec: {e}")),
            Ok(mut io) => {
                // A terminal hangs up once its stdin is closed (by the client, or as it
                // leaves): the output pump then lets go of the master too.
                let hangup = tokio_util::sync::CancellationToken::new();
                let pumps: Vec<_> = io
                    .outputs
                    .drain(..)
                    .map(|(r, chan)| {
                        let (out_tx, hangup) = (out_tx.clone(), hangup.clone());
                        let tty = io.tty.is_some();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = pump(r, chan, out_tx) => {}
                                _ = hangup.cancelled(), if tty => {}
                            }
                        })
                    })
                    .collect();
                let mut stdin = io.input.take();
                let tty = io.tty.clone();
                // Only a session's own stdin, once closed, hangs its terminal up.
                let hang_up = |stdin: &mut Option<Writer>| {
                    if stdin.take().is_some() {
                        hangup.cancel();
                    }
                };
                // Client frames: stdin data, stdin close (v5), terminal resize.
                let reader = async {
                    while let Some(data) = next_frame(&mut rx).await {
                        match data.first() {
                            Some(0) => {
                                if let Some(s) = stdin.as_mut()
                                    && s.write_all(&data[1..]).await.is_err()
                                {
                                    stdin = None;
                                }
                            }
                            Some(4) => {
                                if let Some(path) = &tty {
                                    resize(path, &data[1..]).await;
                                }
                            }
                            Some(255) if v5 && data.get(1) == Some(&0) => hang_up(&mut stdin),
                            _ => {}
                        }
                    }
                    // The client went away: stop feeding input.
                    hang_up(&mut stdin);
                    std::future::pending::<()>().await
                };
                let code = tokio::select! {
                    s = io.child.wait() => s.ok(),
                    _ = reader => None,
                };
                // What the command wrote before it ended; then the pumps stop, even if a
                // process it left behind still holds its output open.
                for mut t in pumps {
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut t).await;
                    t.abort();
                }
                match code {
                    Some(s) => {
                        use std::os::unix::process::ExitStatusExt;
                        let c = s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9));
                        exit_status(c, &q.command)
                    }
                    None => failure("exec: connection closed".into()),
                }
            }
        },
    };
    let mut frame = vec![3u8];
    frame.extend_from_slice(status.to_string().as_bytes());
    let _ = out_tx.send(frame).await;
    drop(out_tx);
    let _ = writer.await;
    await_close(&mut rx).await;
}

type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
type Writer = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// A started exec: the child, where its input goes, its outputs with their channels, and the
/// terminal's path when it has one.
struct Io {
    child: tokio::process::Child,
    input: Option<Writer>,
    outputs: Vec<(Reader, u8)>,
    tty: Option<std::path::PathBuf>,
}

fn spawn(mut cmd: tokio::process::Command, q: &ExecQuery) -> std::io::Result<Io> {
    if q.tty {
        let pty = crate::pty::open()?;
        let path = pty.path;
        let (reader, writer) = crate::pty::master_halves(pty.master)?;
        cmd.stdin(Stdio::from(pty.slave.try_clone()?))
            .stdout(Stdio::from(pty.slave.try_clone()?))
            .stderr(Stdio::from(pty.slave));
        let child = cmd.spawn()?;
        // Our copies of the terminal's slave side close here, so the master reads the end
        // once the command's processes are gone.
        drop(cmd);
        let input: Writer = Box::new(writer);
        let output: Reader = Box::new(reader);
        return Ok(Io {
            child,
            input: q.stdin.then_some(input),
            outputs: if q.stdout {
                vec![(output, 1)]
            } else {
                Vec::new()
            },
            tty: Some(path),
        });
    }
    cmd.stdin(if q.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(if q.stdout {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stderr(if q.stderr {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn()?;
    let mut outputs: Vec<(Reader, u8)> = Vec::new();
    if let Some(o) = child.stdout.take() {
        outputs.push((Box::new(o), 1));
    }
    if let Some(e) = child.stderr.take() {
        outputs.push((Box::new(e), 2));
    }
    let input = child.stdin.take().map(|i| Box::new(i) as Writer);
    Ok(Io {
        child,
        input,
        outputs,
        tty: None,
    })
}

/// Copies a stream into channel `chan` frames until it ends.
async fn pump(mut r: Reader, chan: u8, tx: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf[1..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf[0] = chan;
        if tx.send(buf[..n + 1].to_vec()).await.is_err() {
            break;
        }
    }
}

/// Applies a resize frame (`{"Width": w, "Height": h}`) to the terminal.
async fn resize(path: &std::path::Path, frame: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(frame) else {
        return;
    };
    let (Some(w), Some(h)) = (v["Width"].as_u64(), v["Height"].as_u64()) else {
        return;
    };
    let _ = tokio::process::Command::new("stty")
        .arg("-F")
        .arg(path)
        .args(["rows", &h.to_string(), "cols", &w.to_string()])
        .status()
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_statuses() {
        let q = ExecQuery::parse(
            "command=sh&command=-c&command=exit%203&stdout=true&stderr=true&container=c",
        )
        .unwrap();
        assert_eq!(q.command, ["sh", "-c", "exit 3"]);
        assert!(q.stdout && q.stderr && !q.stdin && !q.tty);
        assert!(ExecQuery::parse("stdout=true").is_err());
        assert!(ExecQuery::parse("command=ls").is_err());
        let s = exit_status(3, &q.command);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(exit_status(0, &q.command)["status"], "Success");
    }
}
