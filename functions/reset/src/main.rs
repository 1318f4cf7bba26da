use std::time::Duration;

use budget_core::store::dynamo::DynamoStore;
use budget_core::telemetry::{init_logging, settings_or_exit};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let settings = settings_or_exit("reset");
    let client =
        DynamoStore::client_from_env(Duration::from_millis(settings.store_timeout_ms)).await;
    let store = DynamoStore::new(client, settings.table_name.clone());
    let (store, settings) = (&store, &settings);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let summary = reset::handle(store, settings, event.payload, chrono::Utc::now()).await;
        serde_json::to_value(summary).map_err(Error::from)
    }))
    .await
}
