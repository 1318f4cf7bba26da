//! `template.yaml` declares the table the code creates (`store::table`):
//! create it in the emulator from the code's definition, describe it, and
//! compare with the template's `BudgetTable`. Also: every function in the
//! template is a binary of this workspace; the upstream receives the gateway
//! secret and the authorizer's reservation id, never the client's; the
//! authorizer's deadlines fit its timeout and its decisions are never cached;
//! the REST denial body is JSON for every value the authorizer can send.

use std::collections::BTreeSet;

use budget_core::model::{Entity, EntityRef};
use budget_core::store::prelude::*;
use budget_core::store::table::{INDEXES, PARTITION_KEY, TTL_ATTRIBUTE};
use edge_budget::{at, hex_id, rest_request_event};
use serde_yaml::Value;

use crate::helpers::TestApp;

/// An index: name, key schema, projection.
type Index = (String, Vec<(String, String)>, String);

pub fn template() -> Value {
    let path = format!("{}/template.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("template.yaml");
    serde_yaml::from_str(&text).expect("template.yaml is YAML")
}

fn s(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{v:?}"))
}

fn key_schema(v: &Value) -> Vec<(String, String)> {
    v.as_sequence()
        .expect("KeySchema list")
        .iter()
        .map(|k| (s(&k["AttributeName"]), s(&k["KeyType"])))
        .collect()
}

#[tokio::test]
async fn the_template_declares_the_table_the_code_creates() {
    let t = template();
    let table = &t["Resources"]["BudgetTable"];
    assert_eq!(s(&table["Type"]), "AWS::DynamoDB::Table");
    let p = &table["Properties"];

    let app = TestApp::with_stream().await;
    let described = app
        .client
        .describe_table()
        .table_name(app.store.table())
        .send()
        .await
        .expect("describe")
        .table
        .expect("table");

    // Billing, key schema and attributes.
    assert_eq!(s(&p["BillingMode"]), "PAY_PER_REQUEST");
    let code_keys: Vec<(String, String)> = described
        .key_schema()
        .iter()
        .map(|k| {
            (
                k.attribute_name().to_string(),
                k.key_type().as_str().to_string(),
            )
        })
        .collect();
    assert_eq!(key_schema(&p["KeySchema"]), code_keys);
    assert_eq!(
        code_keys,
        vec![(PARTITION_KEY.to_string(), "HASH".to_string())]
    );
    let template_attrs: BTreeSet<(String, String)> = p["AttributeDefinitions"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| (s(&a["AttributeName"]), s(&a["AttributeType"])))
        .collect();
    let code_attrs: BTreeSet<(String, String)> = described
        .attribute_definitions()
        .iter()
        .map(|a| {
            (
                a.attribute_name().to_string(),
                a.attribute_type().as_str().to_string(),
            )
        })
        .collect();
    assert_eq!(template_attrs, code_attrs);

    // Indexes: names, keys, projection.
    let template_indexes: BTreeSet<Index> = p["GlobalSecondaryIndexes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|i| {
            (
                s(&i["IndexName"]),
                key_schema(&i["KeySchema"]),
                s(&i["Projection"]["ProjectionType"]),
            )
        })
        .collect();
    let code_indexes: BTreeSet<Index> = described
        .global_secondary_indexes()
        .iter()
        .map(|i| {
            (
                i.index_name().unwrap_or_default().to_string(),
                i.key_schema()
                    .iter()
                    .map(|k| {
                        (
                            k.attribute_name().to_string(),
                            k.key_type().as_str().to_string(),
                        )
                    })
                    .collect(),
                i.projection()
                    .and_then(|p| p.projection_type())
                    .map(|t| t.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(template_indexes, code_indexes);
    assert_eq!(code_indexes.len(), INDEXES.len());

    // TTL on the same attribute, and point-in-time recovery on AWS.
    let ttl = app
        .client
        .describe_time_to_live()
        .table_name(app.store.table())
        .send()
        .await
        .expect("describe ttl");
    let code_ttl = ttl
        .time_to_live_description()
        .and_then(|d| d.attribute_name())
        .unwrap_or_default()
        .to_string();
    assert_eq!(code_ttl, TTL_ATTRIBUTE);
    assert_eq!(
        s(&p["TimeToLiveSpecification"]["AttributeName"]),
        TTL_ATTRIBUTE
    );
    assert_eq!(p["TimeToLiveSpecification"]["Enabled"], Value::Bool(true));
    assert_eq!(
        p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"],
        Value::Bool(true)
    );
    // The stream notify reads: both images, as the code creates it.
    let stream = described.stream_specification().expect("a stream");
    assert!(stream.stream_enabled());
    let view = stream
        .stream_view_type()
        .expect("a view type")
        .as_str()
        .to_string();
    assert_eq!(view, "NEW_AND_OLD_IMAGES");
    assert_eq!(s(&p["StreamSpecification"]["StreamViewType"]), view);
}

#[test]
fn every_function_in_the_template_is_a_workspace_binary() {
    let t = template();
    let mut binaries = BTreeSet::new();
    for (_, resource) in t["Resources"].as_mapping().unwrap() {
        if s(&resource["Type"]) == "AWS::Serverless::Function" {
            assert_eq!(s(&resource["Metadata"]["BuildMethod"]), "rust-cargolambda");
            binaries.insert(s(&resource["Metadata"]["BuildProperties"]["Binary"]));
        }
    }
    let expected: BTreeSet<String> = ["authorize", "settle-spend", "reset", "admin", "notify"]
        .into_iter()
        .map(str::to_string)
        .collect();
    assert_eq!(binaries, expected);
    for bin in &binaries {
        let main = format!("{}/functions/{bin}/src/main.rs", env!("CARGO_MANIFEST_DIR"));
        assert!(std::path::Path::new(&main).exists(), "{main}");
    }
}

/// The value of a `!Ref`, `!Sub`, … tag (`name` without the `!`).
fn tagged<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Tagged(t) if t.tag == name => Some(&t.value),
        _ => None,
    }
}

fn resources_of_type<'a>(t: &'a Value, kind: &str) -> Vec<(String, &'a Value)> {
    t["Resources"]
        .as_mapping()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| s(&r["Type"]) == kind)
        .map(|(name, r)| (s(name), r))
        .collect()
}

/// Every value a setting can take, in ms: a literal, or a `!Ref` to a
/// Number parameter (its default and its MaxValue, which must be set).
fn setting_bounds_ms(t: &Value, v: &Value, what: &str) -> Vec<(String, u64)> {
    if let Some(n) = v.as_u64() {
        return vec![(format!("{what} literal"), n)];
    }
    let param = tagged(v, "Ref")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what} is neither a number nor a !Ref: {v:?}"));
    let p = &t["Parameters"][param];
    assert_eq!(s(&p["Type"]), "Number", "{param}");
    let num = |field: &str| {
        p[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{param}.{field} must be set (a number)"))
    };
    vec![
        (format!("{param}.Default"), num("Default")),
        (format!("{param}.MaxValue"), num("MaxValue")),
    ]
}

/// The authorize function answers before Lambda kills it: the deadline of
/// the whole authorization and the timeout of one store operation are at
/// most half its Timeout, for every value the parameters allow; and the
/// Timeout is under API Gateway's 10 s for an authorizer.
#[test]
fn the_authorize_deadlines_are_well_under_the_function_timeout() {
    let t = template();
    let f = &t["Resources"]["AuthorizeFunction"]["Properties"];
    let timeout_s = f["Timeout"]
        .as_u64()
        .expect("AuthorizeFunction.Timeout is a literal number of seconds");
    assert!(
        timeout_s < 10,
        "API Gateway waits at most 10 s for an authorizer; Timeout is {timeout_s} s"
    );
    let half_ms = timeout_s * 1000 / 2;
    let env = |name: &str| -> Value {
        let own = &f["Environment"]["Variables"][name];
        if !own.is_null() {
            return own.clone();
        }
        t["Globals"]["Function"]["Environment"]["Variables"][name].clone()
    };
    for name in ["AUTHORIZE_DEADLINE_MS", "STORE_TIMEOUT_MS"] {
        let v = env(name);
        assert!(!v.is_null(), "the authorize function must set {name}");
        for (source, ms) in setting_bounds_ms(&t, &v, name) {
            assert!(
                ms <= half_ms,
                "{name} can be {ms} ms ({source}): more than half the authorize function's {timeout_s} s timeout"
            );
        }
    }
    assert_eq!(
        setting_bounds_ms(&t, &env("AUTHORIZE_DEADLINE_MS"), "deadline")[0].1,
        2500,
        "AUTHORIZE_DEADLINE_MS defaults to 2500 ms"
    );
}

/// The reset job stops starting new work well before Lambda stops it, so a
/// backlog is left cleanly to the next run instead of cut mid-write.
#[test]
fn the_reset_deadline_is_well_under_the_function_timeout() {
    let t = template();
    let f = &t["Resources"]["ResetFunction"]["Properties"];
    let timeout_ms = f["Timeout"].as_u64().expect("ResetFunction.Timeout") * 1000;
    let deadline: u64 = f["Environment"]["Variables"]["RESET_DEADLINE_MS"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("the reset function sets RESET_DEADLINE_MS");
    assert!(
        deadline + 10_000 <= timeout_ms,
        "RESET_DEADLINE_MS {deadline} leaves less than 10 s of the {timeout_ms} ms timeout"
    );
}

/// Each authorization reserves budget: a cached decision would let requests
/// through without reserving. Every authorizer of both APIs has caching off.
#[test]
fn authorizer_decisions_are_never_cached() {
    let t = template();
    let http = resources_of_type(&t, "AWS::ApiGatewayV2::Authorizer");
    assert!(!http.is_empty(), "the HTTP API has an authorizer");
    for (name, a) in http {
        assert_eq!(
            a["Properties"]["AuthorizerResultTtlInSeconds"].as_u64(),
            Some(0),
            "{name}: AuthorizerResultTtlInSeconds must be 0"
        );
    }
    assert!(
        resources_of_type(&t, "AWS::Serverless::HttpApi").is_empty(),
        "the HTTP API is declared resource by resource"
    );
    let rest = resources_of_type(&t, "AWS::ApiGateway::Authorizer");
    assert!(!rest.is_empty(), "the REST API has an authorizer");
    for (name, a) in rest {
        assert_eq!(
            a["Properties"]["AuthorizerResultTtlInSeconds"].as_u64(),
            Some(0),
            "{name}: AuthorizerResultTtlInSeconds must be 0"
        );
        assert!(
            a["Properties"]["IdentitySource"].is_null(),
            "{name}: an identity source would answer 401 itself when that one header is absent"
        );
    }
    assert!(
        resources_of_type(&t, "AWS::Serverless::Api").is_empty(),
        "the REST API is declared resource by resource (no imported OpenAPI body)"
    );
}

/// The default deployment is the one LLM clients need: a REST API whose
/// upstream route streams (STREAM, up to 15 minutes), with no imported
/// body (where a mapping may be dropped) and warnings failing the
/// deployment; the HTTP API stays an option. A reservation outlives the
/// longest request the gateway allows.
#[test]
fn the_default_api_streams_and_reservations_outlive_it() {
    let t = template();
    assert_eq!(s(&t["Parameters"]["ApiType"]["Default"]), "rest");
    let api = &t["Resources"]["BudgetRestApi"];
    assert_eq!(s(&api["Type"]), "AWS::ApiGateway::RestApi");
    assert_eq!(s(&api["Condition"]), "UseRestApi");
    assert_eq!(api["Properties"]["FailOnWarnings"], Value::Bool(true));
    assert!(api["Properties"]["Body"].is_null() && api["Properties"]["BodyS3Location"].is_null());
    assert_eq!(
        s(&t["Resources"]["BudgetHttpApi"]["Condition"]),
        "UseHttpApi"
    );

    let m = &t["Resources"]["RestUpstreamMethod"]["Properties"];
    assert_eq!(s(&m["AuthorizationType"]), "CUSTOM");
    assert_eq!(
        tagged(&m["AuthorizerId"], "Ref").map(s).as_deref(),
        Some("BudgetRestAuthorizer")
    );
    let i = &m["Integration"];
    assert_eq!(s(&i["Type"]), "HTTP_PROXY");
    assert_eq!(s(&i["ResponseTransferMode"]), "STREAM");
    let timeouts = setting_bounds_ms(&t, &i["TimeoutInMillis"], "stream timeout");
    let longest = timeouts.iter().map(|(_, ms)| *ms).max().unwrap();
    assert_eq!(
        longest, 900_000,
        "{timeouts:?}: streaming allows 15 minutes"
    );

    // The reservation must outlive the longest request, and the settle
    // after it: its TTL (default and minimum of the code) above the longest
    // stream plus the authorizer's timeout, with room for a retried settle.
    let ttl = &t["Parameters"]["ReservationTtlSeconds"];
    let ttl_default = ttl["Default"].as_u64().unwrap();
    assert!(
        ttl_default * 1000 >= 2 * longest,
        "TTL {ttl_default} s vs a {longest} ms stream"
    );
    let code_default =
        budget_core::Settings::from_lookup(|k| (k == "TABLE_NAME").then(|| "t".to_string()))
            .unwrap()
            .reservation_ttl_seconds;
    assert_eq!(
        code_default as u64, ttl_default,
        "the code's default is the template's"
    );

    // Every REST method is behind the budget authorizer or IAM.
    for (name, m) in resources_of_type(&t, "AWS::ApiGateway::Method") {
        let auth = s(&m["Properties"]["AuthorizationType"]);
        assert!(auth == "CUSTOM" || auth == "AWS_IAM", "{name}: {auth}");
    }
    // The deployment is made after every method and gateway response.
    let depends: BTreeSet<String> = t["Resources"]["BudgetRestApiDeployment"]["DependsOn"]
        .as_sequence()
        .expect("DependsOn")
        .iter()
        .map(s)
        .collect();
    for kind in [
        "AWS::ApiGateway::Method",
        "AWS::ApiGateway::GatewayResponse",
    ] {
        for (name, _) in resources_of_type(&t, kind) {
            assert!(
                depends.contains(&name),
                "BudgetRestApiDeployment must depend on {name}"
            );
        }
    }
}

/// The header mappings of the upstream integration of each API.
fn http_upstream_mappings(t: &Value) -> &serde_yaml::Mapping {
    let i = &t["Resources"]["UpstreamIntegration"];
    assert_eq!(s(&i["Type"]), "AWS::ApiGatewayV2::Integration");
    assert_eq!(s(&i["Properties"]["IntegrationType"]), "HTTP_PROXY");
    i["Properties"]["RequestParameters"]
        .as_mapping()
        .expect("UpstreamIntegration.RequestParameters")
}

/// On the method resource, where API Gateway applies them.
fn rest_upstream_mappings(t: &Value) -> &serde_yaml::Mapping {
    t["Resources"]["RestUpstreamMethod"]["Properties"]["Integration"]["RequestParameters"]
        .as_mapping()
        .expect("RestUpstreamMethod.Integration.RequestParameters")
}

fn sub_text(v: &Value) -> String {
    tagged(v, "Sub")
        .map(s)
        .unwrap_or_else(|| panic!("expected a !Sub, got {v:?}"))
}

/// What reaches the upstream: the authorizer's reservation id and the
/// gateway secret whatever the client sent; not the client's estimate or
/// x-api-key. The upstream route is behind the budget authorizer, and the
/// HTTP API has no imported body where a mapping could be dropped.
#[test]
fn the_upstream_gets_the_gateway_secret_and_the_authorizers_reservation_id() {
    let t = template();
    let secret_ref = "{{resolve:secretsmanager:${GatewaySecret}:SecretString}}";
    assert_eq!(
        s(&t["Resources"]["GatewaySecret"]["Type"]),
        "AWS::SecretsManager::Secret"
    );
    assert_eq!(
        t["Resources"]["GatewaySecret"]["Properties"]["GenerateSecretString"]["ExcludePunctuation"],
        Value::Bool(true),
        "letters and digits only: the REST API quotes it as a static value"
    );

    let http = http_upstream_mappings(&t);
    let get = |m: &serde_yaml::Mapping, k: &str| -> Value {
        m.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("missing mapping {k}"))
    };
    assert_eq!(
        s(&get(http, "overwrite:header.x-budget-reservation-id")),
        "$context.authorizer.reservation_id"
    );
    // What the authorizer charged, never what the client sent.
    assert_eq!(
        s(&get(http, "overwrite:header.x-budget-customer-id")),
        "$context.authorizer.customer_id"
    );
    assert_eq!(
        s(&get(http, "overwrite:header.x-budget-model")),
        "$context.authorizer.model"
    );
    assert_eq!(
        s(&get(http, "overwrite:header.x-budget-tags")),
        "$context.authorizer.tags"
    );
    assert_eq!(
        sub_text(&get(http, "overwrite:header.x-edge-budget-gateway")),
        secret_ref
    );
    for removed in ["x-budget-reserve", "x-api-key"] {
        get(http, &format!("remove:header.{removed}"));
    }
    for k in http.keys() {
        let k = s(k);
        assert!(
            k.starts_with("overwrite:header.") || k.starts_with("remove:header."),
            "{k}: append would keep the client's value beside ours"
        );
    }
    for (name, api) in resources_of_type(&t, "AWS::ApiGatewayV2::Api") {
        assert!(
            api["Properties"]["Body"].is_null() && api["Properties"]["BodyS3Location"].is_null(),
            "{name}: no imported OpenAPI body (it would replace the declared routes)"
        );
    }
    let routes = resources_of_type(&t, "AWS::ApiGatewayV2::Route");
    let upstream: Vec<_> = routes
        .iter()
        .filter(|(_, r)| {
            sub_text(&r["Properties"]["Target"]) == "integrations/${UpstreamIntegration}"
        })
        .collect();
    assert_eq!(upstream.len(), 1, "one route goes to the upstream");
    for (name, r) in upstream {
        assert_eq!(s(&r["Properties"]["AuthorizationType"]), "CUSTOM", "{name}");
        assert_eq!(
            tagged(&r["Properties"]["AuthorizerId"], "Ref")
                .map(s)
                .as_deref(),
            Some("BudgetAuthorizer"),
            "{name}"
        );
    }
    for (name, r) in &routes {
        let auth = s(&r["Properties"]["AuthorizationType"]);
        assert!(auth == "CUSTOM" || auth == "AWS_IAM", "{name}: {auth}");
    }

    let rest = rest_upstream_mappings(&t);
    assert_eq!(
        s(&get(
            rest,
            "integration.request.header.x-budget-reservation-id"
        )),
        "context.authorizer.reservation_id"
    );
    assert_eq!(
        s(&get(
            rest,
            "integration.request.header.x-budget-customer-id"
        )),
        "context.authorizer.customer_id"
    );
    assert_eq!(
        s(&get(rest, "integration.request.header.x-budget-model")),
        "context.authorizer.model"
    );
    assert_eq!(
        s(&get(rest, "integration.request.header.x-budget-tags")),
        "context.authorizer.tags"
    );
    assert_eq!(
        sub_text(&get(
            rest,
            "integration.request.header.x-edge-budget-gateway"
        )),
        format!("'{secret_ref}'")
    );
    // A new GatewaySecretRevision changes the REST method itself (so
    // CloudFormation resolves the secret again), not only the deployment.
    assert_eq!(
        sub_text(&get(
            rest,
            "integration.request.header.x-edge-budget-gateway-revision"
        )),
        "'${GatewaySecretRevision}'"
    );
    // REST cannot remove a header: these carry the authorizer's values.
    assert_eq!(
        s(&get(rest, "integration.request.header.x-budget-reserve")),
        "context.authorizer.reserved"
    );
    assert_eq!(
        s(&get(rest, "integration.request.header.x-api-key")),
        "context.authorizer.key_hash"
    );
}

/// Every `context.authorizer.<name>` the mappings forward is a field the
/// authorizer sets on an allowed request (a missing one would send an
/// empty header, or fail the request).
#[tokio::test]
async fn the_mapped_authorizer_fields_are_in_an_allowed_answer() {
    let t = template();
    let mut fields = BTreeSet::new();
    let mappings = http_upstream_mappings(&t)
        .values()
        .chain(rest_upstream_mappings(&t).values());
    for v in mappings {
        if let Some(text) = v.as_str() {
            if let Some(field) = text
                .strip_prefix("$context.authorizer.")
                .or_else(|| text.strip_prefix("context.authorizer."))
            {
                fields.insert(field.to_string());
            }
        }
    }
    assert!(fields.contains("reservation_id"), "{fields:?}");

    let app = TestApp::new().await;
    let now = at("2026-03-10T12:00:00Z");
    let key = app.key().window("1d", 10.0).at(now).create().await;
    let answer = authorize::handle(
        &app.authorizer,
        rest_request_event(&key, Some("0.2"), &hex_id()),
        now,
    )
    .await
    .expect("an answer");
    assert_eq!(answer["policyDocument"]["Statement"][0]["Effect"], "Allow");
    for field in &fields {
        let v = &answer["context"][field.as_str()];
        assert!(
            v.is_string() || v.is_number(),
            "the authorizer does not send {field}: {answer}"
        );
    }
}

/// The JSON body template of a gateway response.
pub fn gateway_response_body(t: &Value, name: &str) -> String {
    s(&t["Resources"][name]["Properties"]["ResponseTemplates"]["application/json"])
}

/// The REST API's ACCESS_DENIED body template.
pub fn rest_denial_template(t: &Value) -> String {
    let r = &t["Resources"]["RestDeniedResponse"]["Properties"];
    assert_eq!(s(&r["ResponseType"]), "ACCESS_DENIED");
    assert_eq!(s(&r["StatusCode"]), "429");
    s(&r["ResponseTemplates"]["application/json"])
}

/// What API Gateway does with a gateway response template: substitutes
/// `$context.authorizer.<name>` (names of letters, digits and `_`) with the
/// context's value as text, no escaping; a missing value becomes "".
fn render(template: &str, context: &serde_json::Value) -> String {
    const VAR: &str = "$context.authorizer.";
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find(VAR) {
        out.push_str(&rest[..i]);
        rest = &rest[i + VAR.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        match &context[&rest[..end]] {
            serde_json::Value::String(text) => out.push_str(text),
            serde_json::Value::Null => {}
            other => out.push_str(&other.to_string()),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Renders the denial body with `context` and checks it is JSON holding
/// the context's values unchanged.
fn assert_denial_body_is_json(template: &str, context: &serde_json::Value) {
    let body = render(template, context);
    let parsed: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {body}\ncontext: {context}"));
    let error = &parsed["error"];
    for (field, source) in [
        ("message", "message"),
        ("type", "reason"),
        ("entity_id", "entity_id"),
    ] {
        let expected = match &context[source] {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        assert_eq!(
            error[field].as_str(),
            Some(expected.as_str()),
            "{field} in {body}"
        );
    }
}

/// Ids restricted to ASCII letters, digits and `. _ - : @ +`, numbers, and
/// messages built from those, cannot break the REST denial body.
#[test]
fn the_rest_denial_body_is_json_for_adversarial_but_allowed_values() {
    let t = template();
    let template = rest_denial_template(&t);
    assert!(template.contains("$context.authorizer.message"));
    let ids = [
        "a",
        "user.name_1-2:3@example.com+tag",
        "::@@++..__--",
        "+",
        "@",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-:@+",
        "0123456789ab",
    ];
    for id in ids {
        for (max, spend) in [(150.0, 150.0), (0.0, 1e-9), (1e12, 0.123456789)] {
            let context = serde_json::json!({
                "reason": "budget_exceeded",
                "entity": "team",
                "entity_id": id,
                "budget_duration": "30d",
                "max_budget": max,
                "spend": spend,
                "reserved": 0.05,
                "estimate": 0.25,
                "reset_at": "2026-11-29T00:00:00Z",
                "retry_after": 86399,
                "message": format!(
                    "Budget exceeded: team={id} over 30d budget. Spend=${spend:.4} (+$0.0500 reserved), Estimate=$0.2500, Limit=${max:.2}, resets 2026-11-29T00:00:00Z"
                ),
            });
            assert_denial_body_is_json(&template, &context);
        }
    }
    // A denial with only a reason and a message (store unavailable, key
    // blocked or expired): the other fields render as "".
    assert_denial_body_is_json(
        &template,
        &serde_json::json!({"reason": "unavailable", "message": "Budget store unavailable; request refused (fail closed). Try again."}),
    );
}

/// The same with the authorizer's own denials: budget exceeded for a user
/// and a team whose ids use every allowed punctuation character, and a
/// blocked key.
#[tokio::test]
async fn the_rest_denial_body_is_json_for_the_authorizers_denials() {
    let t = template();
    let template = rest_denial_template(&t);
    let app = TestApp::new().await;
    let now = at("2026-03-10T12:00:00Z");
    let suffix = hex_id();
    let user = format!("u.s_e-r:1@example.com+{suffix}");
    let team = format!("T-e.a_m:2@x+{suffix}");
    app.user(&user).window("1d", 1.0).at(now).create().await;
    app.team(&team)
        .window("lifetime", 2.0)
        .at(now)
        .create()
        .await;
    let mut contexts = Vec::new();
    for estimate in ["1.5", "3"] {
        let key = app
            .key()
            .user(&user)
            .team(&team)
            .window("1h", 100.0)
            .at(now)
            .create()
            .await;
        let answer = authorize::handle(
            &app.authorizer,
            rest_request_event(&key, Some(estimate), &hex_id()),
            now,
        )
        .await
        .expect("an answer");
        assert_eq!(answer["context"]["reason"], "budget_exceeded", "{answer}");
        contexts.push(answer["context"].clone());
    }
    let entities: BTreeSet<String> = contexts
        .iter()
        .map(|c| c["entity_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        entities.contains(&user) || entities.contains(&team),
        "{entities:?}"
    );

    let key = budget_core::keys::generate_key();
    let mut blocked = Entity::new(EntityRef::key(budget_core::keys::hash_key(&key)), now);
    blocked.blocked = true;
    app.store
        .create(&blocked)
        .await
        .expect("create blocked key");
    let answer = authorize::handle(
        &app.authorizer,
        rest_request_event(&key, None, &hex_id()),
        now,
    )
    .await
    .expect("an answer");
    assert_eq!(answer["policyDocument"]["Statement"][0]["Effect"], "Deny");
    contexts.push(answer["context"].clone());

    for context in &contexts {
        assert_denial_body_is_json(&template, context);
    }
}

/// An `x-budget-reserve` the authorizer cannot read is denied with a message
/// that does not quote the header: inside the REST denial body quotes, and
/// whatever the client wrote, would end the JSON string.
#[tokio::test]
async fn the_rest_denial_body_is_json_for_an_unreadable_estimate() {
    let t = template();
    let template = rest_denial_template(&t);
    let app = TestApp::new().await;
    let now = at("2026-03-10T12:00:00Z");
    let key = app.key().window("1d", 10.0).at(now).create().await;
    for estimate in ["abc", r#"1", "type": "allowed"#, "\\", "{}"] {
        let answer = authorize::handle(
            &app.authorizer,
            rest_request_event(&key, Some(estimate), &hex_id()),
            now,
        )
        .await
        .expect("an answer");
        assert_eq!(answer["context"]["reason"], "invalid_request", "{answer}");
        assert_denial_body_is_json(&template, &answer["context"]);
    }
}

/// The metric names and `Reason` values the template's alarms and
/// dashboard use in the stack's own namespace: each must be one the code
/// emits, or the alarm would watch a metric that never exists.
#[test]
fn alarms_and_dashboard_watch_metrics_the_functions_emit() {
    use budget_core::metrics::{METRIC_NAMES, REASONS};
    let t = template();
    let mut watched = 0;
    for (name, alarm) in resources_of_type(&t, "AWS::CloudWatch::Alarm") {
        let p = &alarm["Properties"];
        let mut metrics: Vec<&Value> = vec![p];
        if let Some(list) = p["Metrics"].as_sequence() {
            metrics.extend(list.iter().map(|m| &m["MetricStat"]["Metric"]));
        }
        for m in metrics {
            let ours =
                tagged(&m["Namespace"], "Sub").is_some_and(|v| s(v).starts_with("EdgeBudget/"));
            if !ours {
                continue;
            }
            watched += 1;
            let metric = s(&m["MetricName"]);
            assert!(METRIC_NAMES.contains(&metric.as_str()), "{name}: {metric}");
            for d in m["Dimensions"].as_sequence().unwrap() {
                if s(&d["Name"]) == "Reason" {
                    assert!(REASONS.contains(&s(&d["Value"]).as_str()), "{name}");
                }
            }
        }
    }
    assert!(
        watched >= 5,
        "only {watched} alarm metrics in the stack's namespace"
    );
    let sub = tagged(
        &t["Resources"]["Dashboard"]["Properties"]["DashboardBody"],
        "Sub",
    )
    .expect("a !Sub body");
    let body = sub.as_sequence().map_or_else(|| s(sub), |list| s(&list[0]));
    for line in body.lines().filter(|l| l.contains("[\"${Ns}\"")) {
        let metric = line.split('"').nth(3).unwrap();
        assert!(METRIC_NAMES.contains(&metric), "dashboard: {metric}");
    }
    for reason in REASONS {
        assert!(
            body.contains(&format!("\"Reason\", \"{reason}\"")),
            "dashboard lacks {reason}"
        );
    }
}

/// Production settings of the functions and the table: JSON logs with a
/// retention, the reset job alone and never retried with a failure
/// destination, settle-spend's own executions, deletion protection, and
/// the master key from Secrets Manager.
#[test]
fn functions_log_json_with_retention_and_the_reset_job_runs_alone() {
    let t = template();
    let r = &t["Resources"];
    for (name, f) in resources_of_type(&t, "AWS::Serverless::Function") {
        let logging = &f["Properties"]["LoggingConfig"];
        assert_eq!(s(&logging["LogFormat"]), "JSON", "{name}");
        let group = s(tagged(&logging["LogGroup"], "Ref").expect("a log group of its own"));
        assert_eq!(
            s(&r[group.as_str()]["Type"]),
            "AWS::Logs::LogGroup",
            "{name}"
        );
        assert!(tagged(&r[group.as_str()]["Properties"]["RetentionInDays"], "Ref").is_some());
    }
    let reset = &r["ResetFunction"]["Properties"];
    assert_eq!(reset["ReservedConcurrentExecutions"].as_u64(), Some(1));
    assert_eq!(
        reset["EventInvokeConfig"]["MaximumRetryAttempts"].as_u64(),
        Some(0)
    );
    assert!(!reset["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"].is_null());
    let schedule = &reset["Events"]["Schedule"]["Properties"];
    assert_eq!(
        schedule["RetryPolicy"]["MaximumRetryAttempts"].as_u64(),
        Some(0)
    );
    assert!(!r["SettleSpendFunction"]["Properties"]["ReservedConcurrentExecutions"].is_null());
    assert_eq!(
        r["BudgetTable"]["Properties"]["DeletionProtectionEnabled"].as_bool(),
        Some(true)
    );
    let master = &r["AdminFunction"]["Properties"]["Environment"]["Variables"]["MASTER_KEY"];
    assert!(
        sub_text(master).starts_with("{{resolve:secretsmanager:${MasterKeySecret}"),
        "{master:?}"
    );
    assert!(
        t["Parameters"]["MasterKey"].is_null(),
        "no parameter holds the master key"
    );
}

/// Both gateways throttle at the stage (before the authorizer runs, so a
/// flood costs no invocation) and write access logs that carry the
/// authorizer's error and the reservation id — and the key's hash prefix,
/// never a header that holds the key.
#[test]
fn both_gateways_throttle_and_log_the_authorizers_error_and_reservation() {
    let t = template();
    let r = &t["Resources"];
    let http = &r["BudgetHttpApiStage"]["Properties"];
    assert!(tagged(&http["DefaultRouteSettings"]["ThrottlingRateLimit"], "Ref").is_some());
    assert!(tagged(&http["DefaultRouteSettings"]["ThrottlingBurstLimit"], "Ref").is_some());
    let rest = &r["BudgetRestApiStage"]["Properties"];
    let method = &rest["MethodSettings"][0];
    assert_eq!(
        (s(&method["ResourcePath"]), s(&method["HttpMethod"])),
        ("/*".into(), "*".into())
    );
    assert!(tagged(&method["ThrottlingRateLimit"], "Ref").is_some());
    for format in [
        &http["AccessLogSettings"]["Format"],
        &rest["AccessLogSetting"]["Format"],
    ] {
        let line: serde_json::Value = serde_json::from_str(&s(format)).expect("a JSON line");
        let fields: Vec<&str> = line
            .as_object()
            .unwrap()
            .values()
            .filter_map(|v| v.as_str())
            .collect();
        for needed in [
            "$context.requestId",
            "$context.authorizer.error",
            "$context.authorizer.reservation",
            "$context.authorizer.reason",
            "$context.authorizer.key_hash",
            "$context.status",
        ] {
            assert!(fields.contains(&needed), "{needed} missing from {line}");
        }
        assert!(!s(format).contains("header"), "no header is logged: {line}");
        // The id with its receipt names the key's whole hash.
        assert!(
            !s(format).contains("reservation_id"),
            "the reservation id is logged without its receipt: {line}"
        );
    }
}
