//! Kubernetes KMS v2 on both sides of the wire.
//!
//! - [`pb`]: the KMS v2 plugin service (`v2.KeyManagementService`) and the `EncryptedObject` the
//!   apiserver stores, with upstream's package, field names and numbers (compiled by `build.rs`
//!   with protox, so no system `protoc` is needed).
//! - [`connect`]: a lazily connecting gRPC channel to a plugin's `unix://` endpoint, as the
//!   apiserver's KMS v2 provider uses it.
//! - [`plugin`]: `keelson kms-plugin`, a real KMS v2 plugin for local clusters: key-encryption keys
//!   in a file (see [`keys`]), AES-256-GCM wrapping, rotation.

pub mod keys;
pub mod plugin;

/// KMS v2 wire types and gRPC stubs.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("v2");
}

use std::path::PathBuf;

/// The socket path of a KMS endpoint (`unix:///path/to/socket` or `unix:/path`).
pub fn socket_path(endpoint: &str) -> Result<PathBuf, String> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .ok_or_else(|| format!("unsupported scheme in {endpoint:?}, only unix:// is supported"))?;
    if path.is_empty() {
        return Err(format!("no socket path in {endpoint:?}"));
    }
    Ok(PathBuf::from(path))
}

/// A channel to the plugin at `endpoint` (`unix:///...`). It connects on first use and
/// reconnects after the plugin restarts, so a plugin that is down at start-up or comes back
/// later needs no restart of the caller.
pub fn connect(endpoint: &str) -> Result<tonic::transport::Channel, String> {
    let path = socket_path(endpoint)?;
    let ep = tonic::transport::Endpoint::from_static("http://kms.invalid")
        .connect_timeout(std::time::Duration::from_secs(3));
    Ok(
        ep.connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/kms.sock").unwrap(),
            PathBuf::from("/run/kms.sock")
        );
        assert_eq!(
            socket_path("unix:/run/kms.sock").unwrap(),
            PathBuf::from("/run/kms.sock")
        );
        assert!(socket_path("tcp://127.0.0.1:1").is_err());
        assert!(socket_path("unix://").is_err());
    }
}
