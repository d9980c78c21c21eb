//! The F5 OpenAPI document as a strict JSON Schema, to validate responses against.

use serde_json::{Value, json};

/// The OpenAPI document Tally serves (F5's, with the quota maps typed and Tally's own schemas),
/// made strict: an object schema with `properties` allows no other fields, so a response with a
/// field the spec does not name fails. Length bounds inferred from examples
/// (`x-reconciled-from-discovery`, e.g. a name of at least 6 characters because the example's
/// had 7) and bounds marked as inferred are hints, not the contract, and are dropped.
pub fn strict_openapi() -> Value {
    let mut doc: Value =
        serde_json::from_slice(&tally::api::ops::openapi_document()).expect("openapi json");
    fn strictify(value: &mut Value) {
        match value {
            Value::Object(map) => {
                if map.get("x-reconciled-from-discovery") == Some(&Value::Bool(true)) {
                    map.remove("minLength");
                }
                // Bounds a generator guessed (`"source": "inferred"`), such as 1024 characters
                // for a base64 PDF, are hints too.
                let inferred = map
                    .get("x-f5xc-constraints")
                    .and_then(|c| c.pointer("/metadata/source"))
                    .is_some_and(|s| s == "inferred");
                if inferred {
                    map.remove("maxLength");
                    map.remove("minLength");
                }
                if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                    map.insert("additionalProperties".into(), Value::Bool(false));
                }
                map.values_mut().for_each(strictify);
            }
            Value::Array(items) => items.iter_mut().for_each(strictify),
            _ => {}
        }
    }
    strictify(&mut doc["components"]);
    doc
}

/// Asserts `instance` is a valid `#/components/schemas/{name}`.
pub fn assert_schema(doc: &Value, name: &str, instance: &Value) {
    let schema = json!({
        "$ref": format!("#/components/schemas/{name}"),
        "components": doc["components"].clone(),
    });
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:#?}\n{instance:#}");
}
