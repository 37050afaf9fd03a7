//! A small TCP balancer in front of the apiservers, so one `server:` URL in a kubeconfig keeps
//! working when an apiserver dies: each connection goes to the next apiserver that accepts it.
//! TLS passes through untouched (the serving certificate names 127.0.0.1).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Serves `listener` until `shutdown`, spreading connections over `backends`.
pub async fn run(listener: TcpListener, backends: Vec<SocketAddr>, shutdown: CancellationToken) {
    let backends = Arc::new(backends);
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let Some((mut client, _)) =
            keelson_client::net::accept(&listener, &shutdown, "balancer").await
        else {
            return;
        };
        let backends = backends.clone();
        let start = next.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let n = backends.len();
            // A second round waits longer: under a storm of connections (a thousand watchers,
            // nodes coming back after a restart) an apiserver's accept queue fills and a SYN
            // is answered only when retransmitted, after a second.
            for wait in [Duration::from_secs(1), Duration::from_secs(10)] {
                for i in 0..n {
                    let addr = backends[(start + i) % n];
                    if let Ok(Ok(mut upstream)) =
                        tokio::time::timeout(wait, TcpStream::connect(addr)).await
                    {
                        let _ = upstream.set_nodelay(true);
                        let _ = client.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        return;
                    }
                }
            }
            tracing::warn!("no apiserver accepted a connection");
        });
    }
}
