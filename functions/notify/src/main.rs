use std::time::Duration;

use aws_lambda_events::event::dynamodb::Event;
use budget_core::metrics::Emitter;
use budget_core::store::dynamo::DynamoStore;
use budget_core::telemetry::{init_logging, settings_or_exit};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use notify::EventBridge;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let settings = settings_or_exit("notify");
    let client =
        DynamoStore::client_from_env(Duration::from_millis(settings.store_timeout_ms)).await;
    let store = DynamoStore::new(client, settings.table_name.clone());
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let publisher = EventBridge {
        // Well inside the function's 30 s: a hung PutEvents is an error
        // (the marker is given back), not a timeout that leaves it claimed.
        client: aws_sdk_eventbridge::Client::from_conf(
            aws_sdk_eventbridge::config::Builder::from(&config)
                .timeout_config(
                    aws_sdk_eventbridge::config::timeout::TimeoutConfig::builder()
                        .operation_timeout(Duration::from_secs(5))
                        .build(),
                )
                .build(),
        ),
        // EVENT_BUS_NAME: the bus alerts go to (default: the account's default bus).
        bus: std::env::var("EVENT_BUS_NAME")
            .ok()
            .filter(|b| !b.trim().is_empty())
            .unwrap_or_else(|| "default".to_string()),
        stack: std::env::var("ALERT_STACK")
            .ok()
            .filter(|b| !b.trim().is_empty()),
    };
    let emitter = Emitter::stdout(&settings.metrics_namespace);
    let (store, publisher, settings, emitter) = (&store, &publisher, &settings, &emitter);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Event>| async move {
        let (response, _) = notify::handle(
            store,
            publisher,
            settings,
            emitter,
            event.payload,
            chrono::Utc::now(),
        )
        .await;
        Ok::<_, Error>(response)
    }))
    .await
}
