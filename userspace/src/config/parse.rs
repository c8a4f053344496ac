//! Step 1: YAML or JSON text → `serde_json::Value` → `DynamicMessage`.
//!
//! prost-reflect implements the proto3 JSON mapping but its errors do not say where in
//! the document they happened. So the JSON value is first walked against the message
//! descriptors here ([`check_message`]): unknown fields (with a "did you mean"), values of
//! the wrong type, bad enum names and durations, oneof conflicts and unresolvable `Any`
//! types are reported with their path. Leaf values (scalars and the well-known types) are
//! checked by prost-reflect itself, one at a time, so both passes agree on what is valid.
//! Only then is the whole value deserialized with
//! [`DynamicMessage::deserialize_with_options`] (unknown fields denied).

use prost_reflect::{
    DeserializeOptions, DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor,
};
use serde_json::{Map, Value as Json};

use super::{
    descriptor_pool, index, join, supported, type_url_message_name, ConfigError, Format, BOOTSTRAP,
};

/// Parses `text` as a bootstrap. `origin` names the text in syntax errors.
pub(super) fn bootstrap(
    text: &str,
    format: Format,
    origin: &str,
) -> Result<DynamicMessage, ConfigError> {
    let json = to_json(text, format, origin)?;
    let desc = descriptor_pool()
        .get_message_by_name(BOOTSTRAP)
        .expect("the descriptor pool holds envoy.config.bootstrap.v3.Bootstrap");
    // An empty document is an empty bootstrap.
    let json = if json.is_null() {
        Json::Object(Map::new())
    } else {
        json
    };
    message(&json, &desc, "")
}

/// Deserializes `json` as a message of type `desc`; `path` is where `json` sits in the
/// bootstrap (used in errors).
pub(super) fn message(
    json: &Json,
    desc: &MessageDescriptor,
    path: &str,
) -> Result<DynamicMessage, ConfigError> {
    check_message(json, desc, path, None)?;
    DynamicMessage::deserialize_with_options(desc.clone(), json, &DeserializeOptions::new())
        .map_err(|e| ConfigError::field(path, e.to_string()))
}

/// Reads YAML or JSON text into a JSON value.
fn to_json(text: &str, format: Format, origin: &str) -> Result<Json, ConfigError> {
    let syntax = |message: String| ConfigError::Syntax {
        origin: origin.to_string(),
        format,
        message,
    };
    match format {
        Format::Json => serde_json::from_str(text).map_err(|e| syntax(e.to_string())),
        Format::Yaml => {
            let mut yaml: serde_yaml::Value =
                serde_yaml::from_str(text).map_err(|e| syntax(e.to_string()))?;
            yaml.apply_merge().map_err(|e| syntax(e.to_string()))?;
            yaml_to_json(yaml, "")
        }
    }
}

/// Converts a YAML value into JSON. Map keys that are numbers or booleans become strings
/// (protobuf JSON writes map keys as strings); keys tagged `!ignore` are dropped, as Envoy
/// does, so that a bootstrap can hold anchors in a section of its own.
fn yaml_to_json(yaml: serde_yaml::Value, path: &str) -> Result<Json, ConfigError> {
    use serde_yaml::Value as Yaml;
    Ok(match yaml {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Json::from(i)
            } else if let Some(u) = n.as_u64() {
                Json::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                match serde_json::Number::from_f64(f) {
                    Some(number) => Json::Number(number),
                    // proto3 JSON spells these as strings.
                    None if f.is_nan() => Json::from("NaN"),
                    None if f > 0.0 => Json::from("Infinity"),
                    None => Json::from("-Infinity"),
                }
            }
        }
        Yaml::String(s) => Json::String(s),
        Yaml::Sequence(items) => Json::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| yaml_to_json(item, &index(path, i)))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Mapping(mapping) => {
            let mut object = Map::new();
            for (key, value) in mapping {
                let key = match key {
                    Yaml::String(s) => s,
                    Yaml::Number(n) => n.to_string(),
                    Yaml::Bool(b) => b.to_string(),
                    Yaml::Tagged(tagged) if tagged.tag == "ignore" => continue,
                    other => {
                        return Err(ConfigError::field(
                            path,
                            format!("a map key must be a string, not {}", yaml_kind(&other)),
                        ))
                    }
                };
                let value = yaml_to_json(value, &join(path, &key))?;
                object.insert(key, value);
            }
            Json::Object(object)
        }
        Yaml::Tagged(tagged) => {
            return Err(ConfigError::field(
                path,
                format!(
                    "YAML tag {} is not supported (only `!ignore` on a map key is)",
                    tagged.tag
                ),
            ))
        }
    })
}

fn yaml_kind(yaml: &serde_yaml::Value) -> &'static str {
    use serde_yaml::Value as Yaml;
    match yaml {
        Yaml::Null => "null",
        Yaml::Bool(_) => "a boolean",
        Yaml::Number(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Sequence(_) => "a list",
        Yaml::Mapping(_) => "a map",
        Yaml::Tagged(_) => "a tagged value",
    }
}

/// Checks that `json` is a valid proto3 JSON encoding of a `desc` message. `any_hint`
/// says what keel accepts if this is an `Any` (see [`supported::any_hint`]).
fn check_message(
    json: &Json,
    desc: &MessageDescriptor,
    path: &str,
    any_hint: Option<&str>,
) -> Result<(), ConfigError> {
    match desc.full_name() {
        "google.protobuf.Any" => return check_any(json, path, any_hint),
        name if name.starts_with("google.protobuf.") => {
            return check_leaf_message(json, desc, path)
        }
        _ => {}
    }
    let Json::Object(object) = json else {
        return Err(ConfigError::field(
            path,
            format!(
                "expected an object ({}), got {}",
                desc.full_name(),
                shown(json)
            ),
        ));
    };
    check_fields(object, desc, path, None)
}

/// Checks the entries of `object` as fields of `desc`, skipping the key `skip` (the
/// "@type" of an `Any`).
fn check_fields(
    object: &Map<String, Json>,
    desc: &MessageDescriptor,
    path: &str,
    skip: Option<&str>,
) -> Result<(), ConfigError> {
    // Field number → key as written, and oneof name → key as written.
    let mut seen: Vec<(u32, &str)> = Vec::new();
    let mut oneofs: Vec<(String, &str)> = Vec::new();
    for (key, value) in object {
        if Some(key.as_str()) == skip {
            continue;
        }
        let child = join(path, key);
        let Some(field) = desc
            .get_field_by_json_name(key)
            .or_else(|| desc.get_field_by_name(key))
        else {
            return Err(unknown_field(desc, key, &child));
        };
        if let Some((_, first)) = seen.iter().find(|(number, _)| *number == field.number()) {
            return Err(ConfigError::field(
                child,
                format!("field given twice, as \"{first}\" and as \"{key}\"; keep one"),
            ));
        }
        seen.push((field.number(), key));
        // null means "not set" in proto3 JSON.
        if value.is_null() {
            continue;
        }
        if let Some(oneof) = field.containing_oneof() {
            let name = oneof.full_name().to_string();
            if let Some((_, first)) = oneofs.iter().find(|(n, _)| *n == name) {
                return Err(ConfigError::field(
                    child,
                    format!(
                        "\"{first}\" and \"{key}\" are alternatives (oneof {}); set only one",
                        oneof.name()
                    ),
                ));
            }
            oneofs.push((name, key));
        }
        check_field(value, &field, &child)?;
    }
    Ok(())
}

/// Checks the (non-null) value of one field.
fn check_field(json: &Json, field: &FieldDescriptor, path: &str) -> Result<(), ConfigError> {
    let any_hint = supported::any_hint(field.parent_message().full_name(), field.name());
    if field.is_map() {
        let Json::Object(entries) = json else {
            return Err(ConfigError::field(
                path,
                format!("expected a map (an object), got {}", shown(json)),
            ));
        };
        let Kind::Message(entry) = field.kind() else {
            unreachable!("a map field's kind is its entry message")
        };
        let key_kind = entry.map_entry_key_field().kind();
        let value_kind = entry.map_entry_value_field().kind();
        for (key, value) in entries {
            let child = join(path, key);
            check_map_key(key, &key_kind, &child)?;
            check_value(value, &value_kind, &child, any_hint)?;
        }
        Ok(())
    } else if field.is_list() {
        let Json::Array(items) = json else {
            return Err(ConfigError::field(
                path,
                format!("expected a list, got {}", shown(json)),
            ));
        };
        let kind = field.kind();
        for (i, item) in items.iter().enumerate() {
            check_value(item, &kind, &index(path, i), any_hint)?;
        }
        Ok(())
    } else {
        check_value(json, &field.kind(), path, any_hint)
    }
}

/// Checks one value of the given kind (a singular field, a list item or a map value).
fn check_value(
    json: &Json,
    kind: &Kind,
    path: &str,
    any_hint: Option<&str>,
) -> Result<(), ConfigError> {
    match kind {
        Kind::Message(desc) => {
            if json.is_null() && desc.full_name() != "google.protobuf.Value" {
                return Err(ConfigError::field(path, "null is not allowed here"));
            }
            check_message(json, desc, path, any_hint)
        }
        Kind::Enum(desc) => check_enum(json, desc, path),
        scalar => check_scalar(json, scalar, path),
    }
}

fn check_map_key(key: &str, kind: &Kind, path: &str) -> Result<(), ConfigError> {
    let ok = match kind {
        Kind::String => true,
        Kind::Bool => key == "true" || key == "false",
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => key.parse::<i32>().is_ok(),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => key.parse::<i64>().is_ok(),
        Kind::Uint32 | Kind::Fixed32 => key.parse::<u32>().is_ok(),
        Kind::Uint64 | Kind::Fixed64 => key.parse::<u64>().is_ok(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ConfigError::field(
            path,
            format!("map key \"{key}\" is not {}", scalar_expected(kind)),
        ))
    }
}

fn check_enum(json: &Json, desc: &EnumDescriptor, path: &str) -> Result<(), ConfigError> {
    if desc.full_name() == "google.protobuf.NullValue" {
        return match json {
            Json::Null => Ok(()),
            Json::String(s) if s == "NULL_VALUE" => Ok(()),
            _ => Err(ConfigError::field(
                path,
                format!("expected null, got {}", shown(json)),
            )),
        };
    }
    let names = || {
        desc.values()
            .map(|v| v.name().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match json {
        Json::String(s) if desc.get_value_by_name(s).is_some() => Ok(()),
        Json::String(s) => Err(ConfigError::field(
            path,
            format!(
                "unknown value \"{s}\" for {}; expected one of {}",
                desc.name(),
                names()
            ),
        )),
        Json::Number(n) if n.as_i64().is_some_and(|v| i32::try_from(v).is_ok()) => Ok(()),
        _ => Err(ConfigError::field(
            path,
            format!("expected one of {}, got {}", names(), shown(json)),
        )),
    }
}

/// Checks a scalar by deserializing it as the matching wrapper type: prost-reflect reads
/// `google.protobuf.UInt32Value` from a bare JSON value with the same rules as a `uint32`
/// field, so the verdict is the one the final deserialization will reach.
fn check_scalar(json: &Json, kind: &Kind, path: &str) -> Result<(), ConfigError> {
    let wrapper = match kind {
        Kind::Double => "google.protobuf.DoubleValue",
        Kind::Float => "google.protobuf.FloatValue",
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "google.protobuf.Int32Value",
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "google.protobuf.Int64Value",
        Kind::Uint32 | Kind::Fixed32 => "google.protobuf.UInt32Value",
        Kind::Uint64 | Kind::Fixed64 => "google.protobuf.UInt64Value",
        Kind::Bool => "google.protobuf.BoolValue",
        Kind::String => "google.protobuf.StringValue",
        Kind::Bytes => "google.protobuf.BytesValue",
        Kind::Message(_) | Kind::Enum(_) => unreachable!("check_scalar is called for scalars"),
    };
    let desc = descriptor_pool()
        .get_message_by_name(wrapper)
        .expect("the descriptor pool holds google/protobuf/wrappers.proto");
    check_leaf_message(json, &desc, path)
}

/// Checks a well-known type other than `Any` (Duration, Struct, wrappers, ...) by letting
/// prost-reflect read it.
fn check_leaf_message(
    json: &Json,
    desc: &MessageDescriptor,
    path: &str,
) -> Result<(), ConfigError> {
    let Err(err) =
        DynamicMessage::deserialize_with_options(desc.clone(), json, &DeserializeOptions::new())
    else {
        return Ok(());
    };
    let expected = match desc.full_name() {
        "google.protobuf.Duration" => "a duration such as \"5s\", \"0.25s\" or \"1.5s\"",
        "google.protobuf.Timestamp" => "an RFC 3339 timestamp such as \"2024-01-31T12:00:00Z\"",
        "google.protobuf.Struct" => "an object",
        "google.protobuf.ListValue" => "a list",
        "google.protobuf.Empty" => "an empty object",
        "google.protobuf.FieldMask" => "a field mask such as \"a.b,c\"",
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => {
            scalar_expected(&Kind::Double)
        }
        "google.protobuf.Int32Value" => scalar_expected(&Kind::Int32),
        "google.protobuf.Int64Value" => scalar_expected(&Kind::Int64),
        "google.protobuf.UInt32Value" => scalar_expected(&Kind::Uint32),
        "google.protobuf.UInt64Value" => scalar_expected(&Kind::Uint64),
        "google.protobuf.BoolValue" => scalar_expected(&Kind::Bool),
        "google.protobuf.StringValue" => scalar_expected(&Kind::String),
        "google.protobuf.BytesValue" => scalar_expected(&Kind::Bytes),
        _ => "a valid value",
    };
    let err = err.to_string();
    let message = if err.starts_with("invalid type") {
        format!("expected {expected}, got {}", shown(json))
    } else {
        format!("expected {expected}, got {} ({err})", shown(json))
    };
    Err(ConfigError::field(path, message))
}

fn scalar_expected(kind: &Kind) -> &'static str {
    match kind {
        Kind::Double | Kind::Float => "a number",
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "a 32-bit integer",
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "a 64-bit integer",
        Kind::Uint32 | Kind::Fixed32 => "a non-negative 32-bit integer",
        Kind::Uint64 | Kind::Fixed64 => "a non-negative 64-bit integer",
        Kind::Bool => "true or false",
        Kind::String => "a string",
        Kind::Bytes => "a base64 string",
        Kind::Message(_) | Kind::Enum(_) => "a value",
    }
}

/// Checks an `Any`: an object with "@type" naming a message in the pool and, inline, the
/// fields of that message (or "value" for a well-known type). `hint` says what keel
/// accepts here, for the error about an unknown type.
fn check_any(json: &Json, path: &str, hint: Option<&str>) -> Result<(), ConfigError> {
    let Json::Object(object) = json else {
        return Err(ConfigError::field(
            path,
            format!("expected an object with \"@type\", got {}", shown(json)),
        ));
    };
    let type_url = match object.get("@type") {
        Some(Json::String(type_url)) => type_url,
        Some(other) => {
            return Err(ConfigError::field(
                join(path, "@type"),
                format!("expected a type URL string, got {}", shown(other)),
            ))
        }
        None => {
            return Err(ConfigError::field(
                path,
                "missing \"@type\"; a typed config names its message, such as \
                 \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            ))
        }
    };
    let Some(desc) = type_url_message_name(type_url)
        .and_then(|name| descriptor_pool().get_message_by_name(name))
    else {
        let message = match hint {
            Some(hint) => {
                format!("unknown @type \"{type_url}\": keel does not know this message; {hint}")
            }
            None => format!(
                "unknown @type \"{type_url}\": keel does not know this message; check the spelling \
                 (a type URL looks like type.googleapis.com/<full message name>)"
            ),
        };
        return Err(ConfigError::field(path, message));
    };
    if desc.full_name().starts_with("google.protobuf.") {
        for key in object.keys() {
            if key != "@type" && key != "value" {
                return Err(ConfigError::field(
                    join(path, key),
                    format!(
                        "unknown field \"{key}\"; an Any of {} has only \"value\"",
                        desc.full_name()
                    ),
                ));
            }
        }
        return match object.get("value") {
            Some(value) => check_value(value, &Kind::Message(desc), &join(path, "value"), None),
            None => Err(ConfigError::field(path, "missing \"value\"")),
        };
    }
    check_fields(object, &desc, path, Some("@type"))
}

/// The error for a key that names no field of `desc`, with the closest field name if one
/// is close.
fn unknown_field(desc: &MessageDescriptor, key: &str, path: &str) -> ConfigError {
    let mut best: Option<(usize, String)> = None;
    for field in desc.fields() {
        for candidate in [field.name(), field.json_name()] {
            let distance = edit_distance(key, candidate);
            if best.as_ref().is_none_or(|(d, _)| distance < *d) {
                best = Some((distance, candidate.to_string()));
            }
        }
    }
    let hint = match best {
        Some((distance, name)) if distance <= 2.max(key.len() / 4) => {
            format!("; did you mean \"{name}\"?")
        }
        _ => String::new(),
    };
    ConfigError::field(
        path,
        format!("unknown field \"{key}\" in {}{hint}", desc.full_name()),
    )
}

/// Levenshtein distance between two short strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// A short rendering of a JSON value for error messages.
fn shown(json: &Json) -> String {
    let kind = match json {
        Json::Null => return "null".to_string(),
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => return "a list".to_string(),
        Json::Object(_) => return "an object".to_string(),
    };
    let mut text = json.to_string();
    if text.chars().count() > 60 {
        text = text.chars().take(57).collect::<String>() + "...";
    }
    format!("{kind} {text}")
}
