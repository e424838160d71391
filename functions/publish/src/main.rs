//! Lambda entry point of publish: the shared runner with this function's dependencies.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::runner::run::<publish::Deps>().await
}
