//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`): the `k8s\0` magic followed by
//! a `runtime.Unknown` envelope.

use serde_json::Value;

use crate::status::{ApiError, ApiResult};

/// Decodes a protobuf request body into the JSON form of the object.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let _ = body;
    Err(ApiError::unsupported_media_type(
        "application/vnd.kubernetes.protobuf",
    ))
}
