//! Creates the edge-budget table (`TABLE_NAME`) from its one definition,
//! for local runs against an emulator (`AWS_ENDPOINT_URL_DYNAMODB`).
//! On AWS, `template.yaml` creates the same table.

use std::time::Duration;

use budget_core::store::dynamo::DynamoStore;
use budget_core::store::table::create_table;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let Some(name) = std::env::var("TABLE_NAME").ok().filter(|n| !n.is_empty()) else {
        eprintln!("TABLE_NAME is required but not set");
        return std::process::ExitCode::from(2);
    };
    let client = DynamoStore::client_from_env(Duration::from_secs(10)).await;
    match create_table(&client, &name).await {
        Ok(true) => println!("created table {name}"),
        Ok(false) => println!("table {name} exists already"),
        Err(e) => {
            eprintln!("could not create table {name}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}
