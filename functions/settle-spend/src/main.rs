use std::time::Duration;

use budget_core::store::dynamo::DynamoStore;
use budget_core::telemetry::{init_logging, settings_or_exit};
use lambda_http::{service_fn, Error, Request};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let settings = settings_or_exit("settle-spend");
    let client =
        DynamoStore::client_from_env(Duration::from_millis(settings.store_timeout_ms)).await;
    let store = DynamoStore::new(client, settings.table_name.clone());
    let (store, settings) = (&store, &settings);
    lambda_http::run(service_fn(move |request: Request| async move {
        Ok::<_, Error>(settle_spend::handle(store, settings, request, chrono::Utc::now()).await)
    }))
    .await
}
