use std::time::Duration;

use authorize::handle;
use budget_core::service::Authorizer;
use budget_core::store::dynamo::DynamoStore;
use budget_core::telemetry::{init_logging, settings_or_exit};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let settings = settings_or_exit("authorize");
    let client =
        DynamoStore::client_from_env(Duration::from_millis(settings.store_timeout_ms)).await;
    let store = DynamoStore::new(client, settings.table_name.clone());
    let authorizer = Authorizer::new(store, settings);
    let authorizer = &authorizer;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        handle(authorizer, event.payload, chrono::Utc::now()).await
    }))
    .await
}
