//! The one Lambda runner every function's `main.rs` calls, and the one way to invoke a
//! function (the runtime, the integration tests, the events test and the demo all go through
//! [`Function::invoke`] after [`parse_payload`]).
//!
//! The plumbing is written once, generic over the function (the shape of
//! aws-lambda-rust-runtime's `advanced-sqs-partial-batch-failures` example): telemetry, the SDK
//! configuration and the function's dependencies built once per process, then the runtime loop.
//! The runtime hands the payload over as raw JSON text (`Box<RawValue>`, which serde_json reads
//! without a depth limit), and [`parse_payload`] turns it into a value here, so an event nested
//! deeper than serde_json's recursion limit is an `InvalidEvent` like any other bad event, not
//! the runtime's own deserialization error.

use crate::aws::clients;
use crate::deadline::Deadline;
use crate::invocation::InvocationError;
pub use aws_config::SdkConfig;
use chrono::{DateTime, Utc};
use lambda_runtime::{LambdaEvent, service_fn};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::future::Future;
use std::pin::Pin;

/// A pipeline function: its dependencies, built once per process, and one invocation.
pub trait Function: Sized + Send + Sync + 'static {
    /// What a successful invocation answers (serialized as the Lambda response).
    type Output: Serialize + Send + 'static;

    /// Builds the function's dependencies from its environment (`lookup`, the names in
    /// `template.yaml`) and the loaded SDK configuration. Fails with every configuration
    /// problem listed.
    fn from_env(
        lookup: &dyn Fn(&str) -> Option<String>,
        sdk: &SdkConfig,
    ) -> Result<Self, InvocationError>;

    /// One invocation: recognise the event (a trigger or a manual request), then handle it.
    fn invoke(
        &self,
        event: &Value,
        now: DateTime<Utc>,
        deadline: Deadline,
    ) -> impl Future<Output = Result<Self::Output, InvocationError>>;
}

/// Implements [`Function`] for a function crate's `Deps`, written once for the four functions:
/// `from_env` reads the crate's `Config::from_lookup`, builds the home region's clients (S3
/// path-style as configured) and hands both to `new`; `invoke` recognises the event with the
/// crate's `Command::from_event` and runs its `handle`.
///
/// ```ignore
/// shared::impl_function! {
///     deps: Deps, config: Config, command: Command, output: Output,
///     new: Deps::new, handle: handle,
/// }
/// ```
#[macro_export]
macro_rules! impl_function {
    (
        deps: $deps:ty,
        config: $config:ty,
        command: $command:ty,
        output: $output:ty,
        new: $new:path,
        handle: $handle:path $(,)?
    ) => {
        impl $crate::runner::Function for $deps {
            type Output = $output;

            fn from_env(
                lookup: &dyn Fn(&str) -> Option<String>,
                sdk: &$crate::runner::SdkConfig,
            ) -> Result<Self, $crate::invocation::InvocationError> {
                let config = <$config>::from_lookup(lookup)?;
                let clients =
                    $crate::aws::clients::Clients::new(sdk, config.common.s3_force_path_style);
                Ok($new(clients, config))
            }

            async fn invoke(
                &self,
                event: &$crate::runner::__private::Value,
                now: $crate::runner::__private::DateTime<$crate::runner::__private::Utc>,
                deadline: $crate::deadline::Deadline,
            ) -> Result<$output, $crate::invocation::InvocationError> {
                $handle(<$command>::from_event(event)?, self, now, deadline).await
            }
        }
    };
}

/// What [`impl_function!`] names, reachable from every function crate.
#[doc(hidden)]
pub mod __private {
    pub use chrono::{DateTime, Utc};
    pub use serde_json::Value;
}

/// The event's JSON text as a value. Text that is not JSON, or JSON nested deeper than
/// serde_json's recursion limit, is `InvalidEvent`.
pub fn parse_payload(text: &str) -> Result<Value, InvocationError> {
    InvocationError::parse_json(text)
}

/// Runs `F` under the Lambda runtime until the process ends: telemetry, SDK configuration and
/// dependencies once, then every invocation through [`parse_payload`] and [`Function::invoke`].
/// Fails (the process exits, Lambda reports an init error) when the configuration is invalid.
pub async fn run<F: Function>() -> Result<(), lambda_runtime::Error> {
    crate::telemetry::init();
    let sdk = clients::sdk_config(Default::default()).await;
    let function = F::from_env(&|k| std::env::var(k).ok(), &sdk)?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<Box<RawValue>>| {
        let function = &function;
        async move {
            let payload = parse_payload(event.payload.get())?;
            let deadline = Deadline::from_epoch_millis(event.context.deadline);
            // Boxed and type-erased: the handlers' futures nest deeply (regions × steps), and
            // without the box the compiler computes the whole layout inside the runtime loop's
            // future (past its default query depth).
            let invocation: Pin<Box<dyn Future<Output = _> + '_>> =
                Box::pin(function.invoke(&payload, Utc::now(), deadline));
            invocation.await
        }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn the_runtime_reads_any_depth_and_parse_payload_refuses_what_is_too_deep() {
        // What the runtime does with the body: RawValue has no depth limit.
        let raw: Box<RawValue> =
            serde_json::from_str(&nested(100_000)).expect("raw JSON of any depth");
        match parse_payload(raw.get()) {
            Err(InvocationError::InvalidEvent(m)) => {
                assert!(
                    m.contains("not valid JSON") && m.contains("recursion"),
                    "{m}"
                )
            }
            other => panic!("expected InvalidEvent, got {other:?}"),
        }
        assert!(parse_payload(&nested(50)).is_ok());
        assert!(matches!(
            parse_payload("{\"a\":"),
            Err(InvocationError::InvalidEvent(_))
        ));
    }
}
