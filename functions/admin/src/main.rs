use std::time::Duration;

use budget_core::store::dynamo::DynamoStore;
use budget_core::telemetry::{init_logging, settings_or_exit};
use lambda_http::{service_fn, Error, Request};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let settings = settings_or_exit("admin");
    let master_key = admin::master_key_or_exit();
    let client =
        DynamoStore::client_from_env(Duration::from_millis(settings.store_timeout_ms)).await;
    let store = DynamoStore::new(client, settings.table_name.clone());
    let (store, settings, master_key) = (&store, &settings, master_key.as_str());
    lambda_http::run(service_fn(move |request: Request| async move {
        Ok::<_, Error>(
            admin::handle(store, settings, master_key, request, chrono::Utc::now()).await,
        )
    }))
    .await
}
