//! Lambda entry point of publish: configuration and clients once, then the runtime loop.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use publish::{Command, Config, Deps, handle};
use shared::aws::clients::{self, Clients};
use shared::deadline::Deadline;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let config = Config::from_lookup(&|k| std::env::var(k).ok())?;
    let sdk = clients::sdk_config(Default::default()).await;
    let deps = Deps {
        clients: Clients::new(&sdk, config.common.s3_force_path_style),
        config,
    };
    run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        let deps = &deps;
        async move {
            let cmd = Command::from_event(&event.payload)?;
            let deadline = Deadline::from_epoch_millis(event.context.deadline);
            handle(cmd, deps, chrono::Utc::now(), deadline).await
        }
    }))
    .await
}
