//! `template.yaml` declares the table the code creates (`store::table`):
//! create it in the emulator from the code's definition, describe it, and
//! compare with the template's `BudgetTable`. Also: every function in the
//! template is a binary of this workspace.

use std::collections::BTreeSet;

use budget_core::store::table::{INDEXES, PARTITION_KEY, TTL_ATTRIBUTE};
use edge_budget::TestTable;
use serde_yaml::Value;

/// An index: name, key schema, projection.
type Index = (String, Vec<(String, String)>, String);

fn template() -> Value {
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

    let tt = TestTable::new().await;
    let described = tt
        .client
        .describe_table()
        .table_name(tt.store.table())
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
    let ttl = tt
        .client
        .describe_time_to_live()
        .table_name(tt.store.table())
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
    let expected: BTreeSet<String> = ["authorize", "settle-spend", "reset", "admin"]
        .into_iter()
        .map(str::to_string)
        .collect();
    assert_eq!(binaries, expected);
    for bin in &binaries {
        let main = format!("{}/functions/{bin}/src/main.rs", env!("CARGO_MANIFEST_DIR"));
        assert!(std::path::Path::new(&main).exists(), "{main}");
    }
}
