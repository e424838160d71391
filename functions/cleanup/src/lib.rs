//! cleanup: not built yet — see issue #6. The crate exists so the workspace has the product's
//! layout; until then every event is refused with the error type `NotImplemented`.

use shared::placeholder::NotImplemented;

/// Refuses every event, loudly.
pub async fn handle(_event: serde_json::Value) -> Result<serde_json::Value, NotImplemented> {
    Err(NotImplemented {
        function: "cleanup",
        issue: 6,
    })
}
