//! Lambda entry point of cleanup: the shared runner with this function's dependencies.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::runner::run::<cleanup::Deps>().await
}
