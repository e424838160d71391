//! Lambda entry point of tag-lineage: the shared runner with this function's dependencies.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::runner::run::<tag_lineage::Deps>().await
}
