"""The local stand-in for Lambda's DynamoDB stream trigger, and a tail of
the budget alerts it causes (`make local`).

The emulator cannot invoke a function from a table's stream, so this reads
the stream through the emulator's DynamoDB Streams API, hands each batch of
records to the notify function exactly as Lambda would (the same event
shape, `{"Records": [...]}`, through the Lambda runtime API of `cargo
lambda watch`), and prints every event that reaches the emulator's
EventBridge (a rule for `source: edge-budget` delivering to a queue this
reads) to standard output, one line per alert.

usage: python scripts/stream_poller.py ENDPOINT TABLE LAMBDA_URL
"""

import json
import sys
import time
import urllib.request

import boto3

EVENT_SOURCE = "edge-budget"
QUEUE = "edge-budget-local-alerts"


def clients(endpoint):
    kw = dict(
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    return (
        boto3.client("dynamodb", **kw),
        boto3.client("dynamodbstreams", **kw),
        boto3.client("events", **kw),
        boto3.client("sqs", **kw),
    )


def lambda_record(record, stream_arn):
    """A record of GetRecords as Lambda delivers it (epoch seconds, ARN)."""
    change = dict(record["dynamodb"])
    created = change.get("ApproximateCreationDateTime")
    if hasattr(created, "timestamp"):
        change["ApproximateCreationDateTime"] = created.timestamp()
    return {
        "eventID": record["eventID"],
        "eventName": record["eventName"],
        "eventVersion": record.get("eventVersion", "1.1"),
        "eventSource": "aws:dynamodb",
        "awsRegion": record.get("awsRegion", "us-east-1"),
        "dynamodb": change,
        "eventSourceARN": stream_arn,
    }


def is_entity(record):
    """The template's filter: inserts and updates of keys, users, teams and
    escrow slots (a sharded budget's spend)."""
    pk = record["dynamodb"].get("Keys", {}).get("pk", {}).get("S", "")
    return record["eventName"] in ("INSERT", "MODIFY") and pk.split("#", 1)[0] in (
        "key",
        "user",
        "team",
        "slot",
    )


def invoke_notify(lambda_url, records):
    body = json.dumps({"Records": records}).encode()
    request = urllib.request.Request(
        f"{lambda_url}/2015-03-31/functions/notify/invocations",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    # Short: an invocation the local runtime never hands to the function
    # (seen once in CI) is sent again; notify is idempotent (its markers).
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read() or b"{}")


def alert_line(detail):
    what = (
        f"{detail.get('threshold_percent')} %"
        if detail.get("alert") == "threshold"
        else "soft budget"
    )
    return (
        f"ALERT {what} of {detail.get('entity')} {detail.get('entity_id')} "
        f"{detail.get('window')}: spend {detail.get('spend')} of {detail.get('limit')} USD "
        f"(resets {detail.get('reset_at') or 'never'}, alert_id {detail.get('alert_id')})"
    )


def main():
    endpoint, table, lambda_url = sys.argv[1:4]
    ddb, streams, events, sqs = clients(endpoint)
    queue_url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    events.put_rule(Name=QUEUE, EventPattern=json.dumps({"source": [EVENT_SOURCE]}))
    events.put_targets(Rule=QUEUE, Targets=[{"Id": "queue", "Arn": queue_arn}])
    stream_arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"][0]
    iterator = streams.get_shard_iterator(
        StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    print(f"stream poller: {stream_arn} -> notify; alerts on the default bus follow", flush=True)
    pending = []
    while True:
        if not pending:
            answer = streams.get_records(ShardIterator=iterator, Limit=100)
            iterator = answer["NextShardIterator"]
            pending = [lambda_record(r, stream_arn) for r in answer["Records"] if is_entity(r)]
        if pending:
            try:
                result = invoke_notify(lambda_url, pending)
                failed = [f.get("itemIdentifier") for f in result.get("batchItemFailures", [])]
                if failed:
                    # As Lambda does: deliver again from the first failure.
                    seqs = [r["dynamodb"]["SequenceNumber"] for r in pending]
                    pending = pending[seqs.index(failed[0]) :] if failed[0] in seqs else []
                    time.sleep(1)
                else:
                    pending = []
            except Exception as e:  # the function is restarting: try again
                print(f"stream poller: notify did not answer ({e}); retrying", flush=True)
                time.sleep(1)
        for m in sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get(
            "Messages", []
        ):
            print(alert_line(json.loads(m["Body"]).get("detail", {})), flush=True)
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
        time.sleep(0.3)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
