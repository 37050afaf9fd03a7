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
    /// Parses the raw query string (`command` repeats).
    pub fn parse(raw: &str) -> Result<Self, String> {
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
        if q.command.is_empty() {
            return Err("you must specify at least 1 command".into());
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

/// Upgrades to a WebSocket and runs the command.
pub fn serve(ws: WebSocketUpgrade, handle: Arc<dyn ContainerHandle>, q: ExecQuery) -> Response {
    let ws = ws.protocols(PROTOCOLS);
    let Some(proto) = ws.selected_protocol().and_then(|p| p.to_str().ok()) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("requested protocol(s) are not supported; supports {PROTOCOLS:?}"),
        )
            .into_response();
    };
    let v5 = proto == PROTOCOLS[0];
    ws.on_upgrade(move |socket| run(socket, handle, q, v5))
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
        // A normal closure (1000): clients read it as the end of every stream.
        let _ = tx
            .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    });
    let status = match handle.exec_command(&q.command) {
        None => {
            // Nothing to run (hollow): the command "succeeds" with no output.
            exit_status(0, &q.command)
        }
        Some(mut cmd) => {
            cmd.stdin(if q.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            match cmd.spawn() {
                Err(e) => failure(format!("exec: {e}")),
                Ok(mut child) => {
                    let mut stdin = child.stdin.take();
                    let pump = |mut r: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                                chan: u8,
                                tx: mpsc::Sender<Vec<u8>>,
                                keep: bool| {
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 16 * 1024];
                            loop {
                                let n = match r.read(&mut buf[1..]).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                if keep {
                                    buf[0] = chan;
                                    if tx.send(buf[..n + 1].to_vec()).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        })
                    };
                    let err_chan = if q.tty { 1 } else { 2 };
                    let o = child
                        .stdout
                        .take()
                        .map(|s| pump(Box::new(s), 1, out_tx.clone(), q.stdout));
                    let e = child
                        .stderr
                        .take()
                        .map(|s| pump(Box::new(s), err_chan, out_tx.clone(), q.stderr || q.tty));
                    // Client frames: stdin data, stdin close (v5), resize (ignored).
                    let reader = async {
                        while let Some(Ok(msg)) = rx.next().await {
                            let data = match msg {
                                Message::Binary(b) => b.to_vec(),
                                Message::Close(_) => break,
                                _ => continue,
                            };
                            match data.first() {
                                Some(0) => {
                                    if let Some(s) = stdin.as_mut()
                                        && s.write_all(&data[1..]).await.is_err()
                                    {
                                        stdin = None;
                                    }
                                }
                                Some(255) if v5 && data.get(1) == Some(&0) => stdin = None,
                                _ => {}
                            }
                        }
                        // The client went away: stop feeding input.
                        drop(stdin.take());
                        std::future::pending::<()>().await
                    };
                    let code = tokio::select! {
                        s = child.wait() => s.ok(),
                        _ = reader => None,
                    };
                    for t in [o, e].into_iter().flatten() {
                        let _ = t.await;
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
            }
        }
    };
    let mut frame = vec![3u8];
    frame.extend_from_slice(status.to_string().as_bytes());
    let _ = out_tx.send(frame).await;
    drop(out_tx);
    let _ = writer.await;
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
