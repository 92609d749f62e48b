//! Strict reading of a Function manifest, as `kubectl`'s strict field
//! validation: every field must be one the Function's schema (the CRD's
//! OpenAPI schema, generated from the api types) or `ObjectMeta` knows, and
//! `apiVersion` and `kind` must be the served ones. A problem names its line
//! and, when a known name is close, suggests it.
//!
//! The document is walked by a serde visitor straight from the YAML parser,
//! so an error raised on a key carries that key's position.

use std::cell::RefCell;
use std::fmt;
use std::sync::OnceLock;

use porchlight_core::names;
use serde::Deserialize as _;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// What is wrong with a manifest, and on which line (1-based) if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The line.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// Fields of `metadata` (Kubernetes' ObjectMeta).
const OBJECT_META: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "selfLink",
];

/// The Function's OpenAPI schema, as the CRD carries it.
fn function_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        use kube::CustomResourceExt as _;
        let crd = porchlight_api::Function::crd();
        crd.spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null)
    })
}

/// Whether a document with this `apiVersion` is meant for Porchlight (its
/// group, or a typo of it) and is then read strictly, rather than another
/// object that may sit in the same folder (a ConfigMap, another project's
/// `Function`). Porchlight's group serves only Functions.
pub fn looks_like_a_function(api_version: &str) -> bool {
    let group = api_version.split_once('/').map_or(api_version, |(g, _)| g);
    group == names::GROUP || close_to(group, names::GROUP)
}

/// Walks one YAML document of the manifest `text` strictly.
pub fn check(text: &str, document: serde_yaml::Deserializer<'_>) -> Result<(), Problem> {
    let found: Found = RefCell::new(None);
    let walk = document.deserialize_any(Node {
        schema: Some(function_schema()),
        path: String::new(),
        found: &found,
    });
    walk.map_err(|e| {
        let line = e.location().map(|l| l.line());
        match found.take() {
            // Our own words, without serde_yaml's path and position; the
            // parser places the error at the start of the mapping that
            // holds the key, so the key is looked for from there.
            Some((message, key)) => Problem {
                line: line.map(|from| key_line(text, from, &key)),
                message,
            },
            None => Problem {
                line,
                message: e.to_string(),
            },
        }
    })
}

/// The message of a refusal and the key it is about.
type Found = RefCell<Option<(String, String)>>;

/// Keeps `message` for [`check`] and returns it as the walk's error.
fn refuse<E: de::Error>(found: &Found, key: &str, message: String) -> E {
    let error = E::custom(&message);
    *found.borrow_mut() = Some((message, key.to_string()));
    error
}

/// The first line from `from` (1-based) where `key` is written as a
/// mapping key (`key:`, `- key:`, `{key: ...}`); `from` if none is.
fn key_line(text: &str, from: usize, key: &str) -> usize {
    let is_key_at = |line: &str, at: usize| {
        let before = line[..at].trim_end();
        let after = line[at + key.len()..].trim_start();
        (before.is_empty() || before.ends_with(['-', '{', ',', '"', '\'']))
            && after.trim_start_matches(['"', '\'']).starts_with(':')
    };
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, line)| line.match_indices(key).any(|(at, _)| is_key_at(line, at)))
        .map_or(from, |(i, _)| i + 1)
}

/// A name within a small edit distance of `known` (a typo, or a case slip).
fn close_to(name: &str, known: &str) -> bool {
    let limit = (known.chars().count() / 3).clamp(1, 3);
    name.eq_ignore_ascii_case(known) || edit_distance(name, known) <= limit
}

/// A typo of the start of `known` (`timout` for `timeoutSeconds`).
fn close_to_start_of(name: &str, known: &str) -> bool {
    let n = name.chars().count();
    n >= 4
        && (n - 1..=n + 1).any(|len| {
            let start: String = known.chars().take(len).collect();
            edit_distance(&name.to_ascii_lowercase(), &start.to_ascii_lowercase()) <= 1
        })
}

/// The closest of `known` to `name`, if close enough to be what was meant.
fn suggestion<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .filter(|k| close_to(name, k) || close_to_start_of(name, k))
        .min_by_key(|k| edit_distance(name, k))
}

/// Edit distance by characters, a swap of two neighbours counting one
/// (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

fn did_you_mean(suggested: Option<&str>) -> String {
    suggested.map_or_else(String::new, |s| format!("; did you mean `{s}`?"))
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// One node of the document and the schema it must follow (`None`: any).
struct Node<'s> {
    schema: Option<&'s Value>,
    path: String,
    found: &'s Found,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Node<'_> {
    /// The field names this node allows, when it has a fixed set.
    fn fields(&self) -> Option<Vec<&str>> {
        if self.path == "metadata" {
            return Some(OBJECT_META.to_vec());
        }
        let properties = self.schema?.get("properties")?.as_object()?;
        let mut fields: Vec<&str> = properties.keys().map(String::as_str).collect();
        if self.path.is_empty() {
            // Every object has these; the CRD's schema leaves them out.
            fields.extend(["apiVersion", "kind", "metadata"]);
        }
        Some(fields)
    }

    /// The schema of the value under `key`.
    fn child(&self, key: &str) -> Option<&Value> {
        let schema = self.schema?;
        if let Some(p) = schema.get("properties").and_then(|p| p.get(key)) {
            return Some(p);
        }
        schema.get("additionalProperties").filter(|a| a.is_object())
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Function manifest")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let fields = self.fields();
        while let Some(key) = map.next_key_seed(Key {
            fields: fields.as_deref(),
            path: &self.path,
            found: self.found,
        })? {
            let path = child_path(&self.path, &key);
            match path.as_str() {
                "apiVersion" => map.next_value_seed(Exact {
                    field: "apiVersion",
                    expected: names::API_VERSION,
                    found: self.found,
                })?,
                "kind" => map.next_value_seed(Exact {
                    field: "kind",
                    expected: names::FUNCTION_KIND,
                    found: self.found,
                })?,
                _ => map.next_value_seed(Node {
                    schema: self.child(&key),
                    path,
                    found: self.found,
                })?,
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let items = self.schema.and_then(|s| s.get("items"));
        let mut i = 0;
        while seq
            .next_element_seed(Node {
                schema: items,
                path: format!("{}[{i}]", self.path),
                found: self.found,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A mapping key, refused when the node has a fixed set of fields and the
/// key is not one of them.
struct Key<'a> {
    fields: Option<&'a [&'a str]>,
    path: &'a str,
    found: &'a Found,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        let key = String::deserialize(deserializer)?;
        match self.fields {
            Some(fields) if !fields.contains(&key.as_str()) => Err(refuse(
                self.found,
                &key,
                format!(
                    "unknown field `{}`{}",
                    child_path(self.path, &key),
                    did_you_mean(suggestion(&key, fields.iter().copied()))
                ),
            )),
            _ => Ok(key),
        }
    }
}

/// A value that must be exactly `expected` (`apiVersion`, `kind`).
struct Exact<'a> {
    field: &'static str,
    expected: &'static str,
    found: &'a Found,
}

impl<'de> DeserializeSeed<'de> for Exact<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        let value = String::deserialize(deserializer)?;
        if value == self.expected {
            return Ok(());
        }
        Err(refuse(
            self.found,
            self.field,
            format!(
                "{} `{value}` is not served here; did you mean `{}`?",
                self.field, self.expected
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(yaml: &str) -> String {
        let p = check(yaml, serde_yaml::Deserializer::from_str(yaml)).expect_err("refused");
        format!("line {}: {}", p.line.unwrap_or(0), p.message)
    }

    const GOOD: &str = "apiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata:\n  name: hello\n  labels: {team: a}\nspec:\n  runtime: python3.12\n  handler: app.h\n  env: {ANY_NAME: x}\n  code: {inline: x}\n  scaling: {maxScale: 3}\n  triggers:\n    - http: {payloadFormat: \"2.0\"}\n";

    #[test]
    fn a_valid_manifest_passes() {
        check(GOOD, serde_yaml::Deserializer::from_str(GOOD)).expect("valid");
    }

    #[test]
    fn unknown_fields_are_named_with_their_line_and_a_suggestion() {
        let yaml = GOOD.replace("  handler: app.h\n", "  handler: app.h\n  timout: 3\n");
        let got = problem(&yaml);
        assert!(
            got.starts_with("line 9: unknown field `spec.timout`; did you mean `timeoutSeconds`?"),
            "{got}"
        );
        let yaml = GOOD.replace("{maxScale: 3}", "{maxscale: 3}");
        let got = problem(&yaml);
        assert!(
            got.contains("`spec.scaling.maxscale`; did you mean `maxScale`?"),
            "{got}"
        );
        let yaml = GOOD.replace("payloadFormat", "payloadFromat");
        assert!(problem(&yaml).contains("did you mean `payloadFormat`?"));
        let yaml = GOOD.replace("  name: hello", "  nmae: hello");
        assert!(
            problem(&yaml)
                .starts_with("line 4: unknown field `metadata.nmae`; did you mean `name`?")
        );
        let yaml = GOOD.replace(
            "  code: {inline: x}\n",
            "  code: {inline: x}\n  colour: red\n",
        );
        let got = problem(&yaml);
        assert!(
            got.contains("unknown field `spec.colour`") && !got.contains("did you mean"),
            "{got}"
        );
    }

    #[test]
    fn a_wrong_kind_or_version_is_refused() {
        let got = problem(&GOOD.replace("kind: Function", "kind: Funtion"));
        assert!(
            got.starts_with("line 2: kind `Funtion` is not served here; did you mean `Function`?"),
            "{got}"
        );
        let got = problem(&GOOD.replace("porchlight.dev/v1alpha1", "porchlight.dev/v1"));
        assert!(
            got.starts_with("line 1: apiVersion `porchlight.dev/v1`"),
            "{got}"
        );
        assert!(
            got.contains("did you mean `porchlight.dev/v1alpha1`?"),
            "{got}"
        );
    }

    #[test]
    fn other_kinds_are_told_apart_from_typos() {
        assert!(looks_like_a_function("porchlight.dev/v1"));
        assert!(looks_like_a_function("porchlite.dev/v1alpha1"));
        assert!(!looks_like_a_function("v1"));
        assert!(!looks_like_a_function("apps/v1"));
        assert!(!looks_like_a_function("fission.io/v1"));
    }
}
