//! Lambda entry point of tag-lineage.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        tag_lineage::handle(event.payload)
    }))
    .await
}
