//! Ctrl-C for the chaos commands: the first ends the run early and lets it clean up (members
//! stopped, filesystems unmounted, networks removed) and check what it recorded; a second
//! exits at once.

use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

static INTERRUPTED: OnceLock<CancellationToken> = OnceLock::new();

/// Cancelled by the first Ctrl-C once [`install`] has run; never otherwise.
pub fn token() -> CancellationToken {
    INTERRUPTED.get_or_init(CancellationToken::new).clone()
}

/// Whether Ctrl-C has asked the run to end.
pub fn requested() -> bool {
    token().is_cancelled()
}

/// Takes Ctrl-C from here on (inside a tokio runtime): the first cancels [`token`], the
/// second exits with status 130.
pub fn install() {
    let token = token();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!(
            "interrupted: ending the run early, then cleaning up and checking (Ctrl-C again to exit now)"
        );
        token.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
}

/// Sleeps until `deadline`, or less if Ctrl-C asks the run to end: whether it did.
pub async fn sleep_until(deadline: tokio::time::Instant) -> bool {
    let token = token();
    tokio::select! {
        _ = tokio::time::sleep_until(deadline) => token.is_cancelled(),
        _ = token.cancelled() => true,
    }
}

/// [`sleep_until`] `now + d`.
pub async fn sleep(d: std::time::Duration) -> bool {
    sleep_until(tokio::time::Instant::now() + d).await
}
