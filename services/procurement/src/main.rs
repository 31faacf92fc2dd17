//! The procurement service as its own process (distributed mode). Configuration: defaults, then
//! `--config FILE` (or `ERP_CONFIG`), then `ERP__SECTION__KEY` environment variables.

#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    erp_runtime::app::main_for::<erp_procurement::Service>().await
}
