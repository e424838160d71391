//! Lambda entry point of create-image: the shared runner with this function's dependencies.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::runner::run::<create_image::Deps>().await
}
