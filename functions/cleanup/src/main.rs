//! Lambda entry point of cleanup.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        cleanup::handle(event.payload)
    }))
    .await
}
